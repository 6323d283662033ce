"""Peak memory and seconds per step of Wan2.1-1.3B fine-tuning: LoRA vs full, activation
checkpointing on/off, per clip length. Random weights of the real configuration (memory and
speed do not depend on the values); latents and umT5 embeddings precomputed, as `tubelet data
cache` gives them, so the VAE and the text encoder are not in memory.

    python benchmarks/finetune_memory.py --device cuda        # GPU: 480x832, 33 and 81 frames, 30 layers
    python benchmarks/finetune_memory.py                      # CPU: the real width, 2 layers, small clips,
                                                              # + the estimate for the full sizes

Each case runs in its own process (a clean peak). On CUDA the peak is
`torch.cuda.max_memory_allocated`; on the CPU the growth of the process's peak RSS over what it held
before the model was built. Both include the weights, gradients and AdamW state of the first step.

The estimate (CPU): memory = the training state (counted exactly: a frozen bf16 base + fp32 LoRA
weights, gradients and AdamW moments; or fp32 weights, gradients and moments for a full fine-tune)
+ activations, counted exactly as well: a forward under `saved_tensors_hooks` sums the bytes autograd
keeps for the backward (by storage, parameters excluded), outside the blocks, per block, and the
inputs each block is called with (all that checkpointing keeps of a block). Each is the same for
every block and a straight line in the number of tokens (a constant part: the text context's
projections), so two clip lengths give it exactly, for 30 blocks and 480x832:
    no checkpointing:  outside + (layers + 1) x block          (+1: the last block's backward working set)
    checkpointing:     outside + layers x block inputs + 2 x block   (one block recomputed + its backward)
The one allowance (the backward's working set taken as one block's activations) is checked
against the measured peaks at the reduced sizes, printed beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

LORA_RANK = 32


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _tokens(frames: int, height: int, width: int, patch: tuple[int, int, int]) -> int:
    f = 1 + (frames - 1) // 4  # Wan VAE: 4x in time (causal), 8x in space
    return (f // patch[0]) * (height // 8 // patch[1]) * (width // 8 // patch[2])


def run_case(
    mode: str, ckpt: bool, frames: int, height: int, width: int, layers: int, device: str, steps: int
) -> dict[str, Any]:
    from tubelet.diffusion.cond import Cond
    from tubelet.models.dit import VideoDiT, dit_config
    from tubelet.models.lora import LoRAConfig, attach_lora
    from tubelet.train.parallel import apply_activation_checkpointing

    dev = torch.device(device)
    base_rss = _rss_peak()
    cfg = dit_config("wan2.1-1.3b")
    if layers:
        cfg = dataclasses.replace(cfg, num_layers=layers)
    model = VideoDiT(cfg)
    if mode == "lora":
        model.requires_grad_(False)
        model.to(torch.bfloat16)
        params = attach_lora(model, LoRAConfig(rank=LORA_RANK, alpha=LORA_RANK))
    else:
        params = list(model.parameters())
    model.to(dev).train()
    if ckpt:
        apply_activation_checkpointing(model)
    opt = torch.optim.AdamW(params, lr=1e-5)
    lat_f = 1 + (frames - 1) // 4
    x = torch.randn(1, cfg.in_channels, lat_f, height // 8, width // 8, device=dev)
    ctx = torch.randn(1, 512, cfg.text_dim, device=dev)  # umT5: 512 tokens
    mask = torch.ones(1, 512, dtype=torch.bool, device=dev)
    t = torch.rand(1, device=dev) * 1000

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            out = model(x, t, Cond(context=ctx, context_mask=mask))
            loss = out.float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    saved = saved_activations(model, lambda: model(x, t, Cond(context=ctx, context_mask=mask)), dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(1 + steps):  # the first step allocates the AdamW state; it is in the peak, not the time
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _rss_peak() - base_rss
    return {
        "mode": mode,
        "checkpointing": ckpt,
        "frames": frames,
        "height": height,
        "width": width,
        "layers": cfg.num_layers,
        "tokens": _tokens(frames, height, width, cfg.patch_size),
        "params": sum(p.numel() for p in model.parameters()),
        "trained_params": sum(p.numel() for p in params),
        "peak_bytes": int(peak),
        "s_per_step": statistics.median(times) if times else None,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        **saved,
    }


def saved_activations(model: Any, forward: Any, dev: torch.device) -> dict[str, int]:
    """What one forward keeps for the backward, in bytes (exact, counted by storage): outside the
    blocks, inside each block (nothing under checkpointing: the checkpoint's own hooks take those),
    and the inputs each block is called with (what checkpointing keeps instead)."""
    from tubelet.train.parallel import blocks_of

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    where: list[str] = ["outside"]
    seen: dict[int, tuple[str, int]] = {}

    def add(t: torch.Tensor, kind: str) -> None:
        st = t.untyped_storage()
        if st.data_ptr() not in params and st.data_ptr() not in seen:
            seen[st.data_ptr()] = (kind, st.nbytes())

    def pack(t: torch.Tensor) -> torch.Tensor:
        add(t, where[-1])
        return t

    hooks = []
    for blk in blocks_of(model):

        def pre(m: Any, args: Any, kwargs: Any) -> None:
            for a in [*args, *kwargs.values()]:
                if dataclasses.is_dataclass(a):  # e.g. DiTState: rope, context, modulation
                    a = [getattr(a, f.name) for f in dataclasses.fields(a)]
                for v in a if isinstance(a, (tuple, list)) else [a]:
                    if isinstance(v, torch.Tensor):
                        add(v, "block_inputs")
            where.append("blocks")

        hooks.append(blk.register_forward_pre_hook(pre, with_kwargs=True))

        def post(m: Any, args: Any, out: Any) -> None:  # returns None: the output stays as it is
            where.pop()

        hooks.append(blk.register_forward_hook(post))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            out = forward()
    for h in hooks:
        h.remove()
    del out
    total = {k: 0 for k in ("outside", "blocks", "block_inputs")}
    for kind, n in seen.values():
        total[kind] += n
    return {f"saved_{k}": v for k, v in total.items()}


def state_bytes(mode: str, params: int, trained: int) -> int:
    """Weights, gradients and AdamW moments (the training state, exact)."""
    if mode == "lora":
        return (params - trained) * 2 + trained * 16  # bf16 base; fp32 LoRA weight + grad + 2 moments
    return params * 16  # fp32 weight + grad + 2 moments


Line = tuple[float, float]  # bytes = a + b * tokens


def _line(rows: list[dict[str, Any]], key: str, per_layer: bool) -> Line:
    """`key` of the shortest and the longest clip of `rows` as a + b * tokens (the constant part is
    what does not grow with the clip, e.g. the text context's projections)."""
    lo, hi = min(rows, key=lambda r: r["tokens"]), max(rows, key=lambda r: r["tokens"])
    y0, y1 = (r[key] / (r["layers"] if per_layer else 1) for r in (lo, hi))
    if hi["tokens"] == lo["tokens"]:
        return 0.0, y1 / hi["tokens"]
    b = (y1 - y0) / (hi["tokens"] - lo["tokens"])
    return y0 - b * lo["tokens"], b


def rates(rows: list[dict[str, Any]], mode: str) -> tuple[Line, Line, Line]:
    """Saved bytes as lines in tokens: outside the blocks, per block, and per block's inputs
    (checkpointing), from the measured clips of `mode` (exact counts at two clip lengths)."""
    plain = [r for r in rows if r["mode"] == mode and not r["checkpointing"]]
    ck = [r for r in rows if r["mode"] == mode and r["checkpointing"]]
    return (
        _line(plain, "saved_outside", False),
        _line(plain, "saved_blocks", True),
        _line(ck, "saved_block_inputs", True),
    )


def model_bytes(
    mode: str, ckpt: bool, tokens: int, layers: int, params: int, trained: int, r: tuple[Line, Line, Line]
) -> tuple[int, int]:
    """(training state, activations) in bytes: the memory model of the module doc."""
    outside, per_block, inputs = (a + b * tokens for a, b in r)
    if ckpt:  # the block inputs + one block recomputed + its backward's working set (as large)
        act = outside + layers * inputs + 2 * per_block
    else:  # every block's activations + the last block's backward working set
        act = outside + (layers + 1) * per_block
    return state_bytes(mode, params, trained), int(act)


def estimate(
    rows: list[dict[str, Any]], full_layers: int, full_params: dict[str, tuple[int, int]]
) -> list[dict[str, Any]]:
    """The full model at 480x832 (module doc)."""
    from tubelet.models.dit import dit_config

    patch = dit_config("wan2.1-1.3b").patch_size
    out = []
    for mode in ("lora", "full"):
        r = rates(rows, mode)
        params, trained = full_params[mode]
        for ckpt in (False, True):
            for frames in (33, 81):
                tok = _tokens(frames, 480, 832, patch)
                state, act = model_bytes(mode, ckpt, tok, full_layers, params, trained, r)
                out.append({"mode": mode, "checkpointing": ckpt, "frames": frames, "tokens": tok,
                            "state_bytes": state, "activation_bytes": act, "estimate_bytes": state + act})  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case (default: 3 CUDA, 1 CPU)")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # mode,ckpt,frames,h,w,layers (child)
    args = ap.parse_args()
    if args.case:
        mode, ck, f, h, w, n = args.case.split(",")
        row = run_case(mode, ck == "1", int(f), int(h), int(w), int(n), args.device, args.steps)
        print(json.dumps(row))
        return
    cuda = args.device.startswith("cuda")
    steps = args.steps if args.steps is not None else (3 if cuda else 1)
    # GPU: the real thing. CPU: the real width with 2 of the 30 layers, 240x416, 5 and 9 frames.
    sizes = [(33, 480, 832, 0), (81, 480, 832, 0)] if cuda else [(5, 240, 416, 2), (9, 240, 416, 2)]
    rows = []
    for mode in ("lora", "full"):
        for ckpt in (False, True):
            for f, h, w, n in sizes:
                case = f"{mode},{int(ckpt)},{f},{h},{w},{n}"
                p = subprocess.run(
                    [sys.executable, __file__, "--case", case, "--device", args.device, "--steps", str(steps)],
                    capture_output=True, text=True,
                )  # fmt: skip
                if p.returncode:
                    oom = "out of memory" in p.stderr.lower()
                    rows.append({"mode": mode, "checkpointing": ckpt, "frames": f, "height": h, "width": w,
                                 "error": "out of memory" if oom else p.stderr.strip().splitlines()[-1]})  # fmt: skip
                else:
                    rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(
                    f"{mode:4} ckpt={'on ' if ckpt else 'off'} {f:3d}x{h}x{w} layers {r.get('layers', n or 30):2}: "
                    + (f"{r['error']}" if "error" in r else f"peak {r['peak_bytes'] / 2**30:6.2f} GiB, {r['s_per_step']:.2f} s/step"),
                    flush=True,
                )  # fmt: skip
    result: dict[str, Any] = {"device": args.device, "torch": torch.__version__, "rows": rows}
    if not cuda:
        from tubelet.models.dit import VideoDiT, dit_config
        from tubelet.models.lora import LoRAConfig, attach_lora

        with torch.device("meta"):
            full = VideoDiT(dit_config("wan2.1-1.3b"))
            n_params = sum(p.numel() for p in full.parameters())
            n_lora = sum(p.numel() for p in attach_lora(full, LoRAConfig(rank=LORA_RANK, alpha=LORA_RANK)))
        ok = [r for r in rows if "error" not in r]
        print("\nthe memory model on the measured cases (measured peak RSS growth / model):")
        for r in ok:
            state, act = model_bytes(r["mode"], r["checkpointing"], r["tokens"], r["layers"], r["params"], r["trained_params"], rates(ok, r["mode"]))  # fmt: skip
            r["model_bytes"] = state + act
            print(f"  {r['mode']:4} ckpt={'on ' if r['checkpointing'] else 'off'} {r['frames']:2d} frames: {r['peak_bytes'] / 2**30:5.2f} / {(state + act) / 2**30:5.2f} GiB")  # fmt: skip
        est = estimate(ok, 30, {"lora": (n_params, n_lora), "full": (n_params, n_params)})
        result["estimate"] = est
        print(
            f"\nestimate for Wan2.1-1.3B ({n_params / 1e9:.2f}B params; LoRA rank {LORA_RANK}: {n_lora / 1e6:.1f}M), 480x832, bf16, batch 1:"
        )
        for e in est:
            print(f"  {e['mode']:4} ckpt={'on ' if e['checkpointing'] else 'off'} {e['frames']:2d} frames ({e['tokens']} tokens): {e['estimate_bytes'] / 2**30:6.1f} GiB")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
