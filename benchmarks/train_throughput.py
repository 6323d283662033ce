"""Training throughput: samples/s, tokens/s and model FLOPs utilisation (MFU).

    python benchmarks/train_throughput.py --latent 8,16,8,8     # the default model's DiT stage on this machine
    python benchmarks/train_throughput.py --dit wan2.1-1.3b --latent 16,21,60,104 --batch 1   # on a GPU

MFU = achieved model FLOPs / the machine's measured dense matmul rate in the same dtype (not a
datasheet peak, which a 2-core CPU never reaches): 2048^3 products timed here.
Model FLOPs per sample (forward + backward = 3x forward), counting matmuls only:
  linear layers 2 * params_in_matmuls * tokens, self-attention 4 * N^2 * dim per layer,
  cross-attention 4 * N * L_text * dim per layer, the text encoder's linears and attention likewise.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from torch import nn

from tubelet.diffusion.cond import Cond
from tubelet.train.parallel import apply_activation_checkpointing


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def linear_params(m: nn.Module) -> int:
    return sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, nn.Linear))


def main() -> None:
    from tubelet.devices import resolve_device
    from tubelet.models.dit import VideoDiT, dit_config
    from tubelet.models.text import ByteTextConfig, ByteTextEncoder
    from tubelet.train.config import resolve_train_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--preset", default="shapes-t2v-frames", help="training preset (its dit, text encoder, bucket)"
    )
    ap.add_argument(
        "--dit", default=None, help="override: a DiT preset name (e.g. wan2.1-1.3b); text is then precomputed"
    )
    ap.add_argument("--latent", default=None, help="C,F,H,W latent shape (default: from the preset's bucket)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--text-len", type=int, default=96)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--checkpointing", action="store_true")
    args = ap.parse_args()

    device = resolve_device(args.device)
    cfg = resolve_train_config(args.preset)
    bucket = max(cfg.data.buckets, key=lambda b: b.frames)
    batch = args.batch or bucket.batch_size
    text = None
    if args.dit:
        dcfg = dit_config(args.dit)
    else:
        tcfg = ByteTextConfig(**cfg.text_encoder) if isinstance(cfg.text_encoder, dict) else None
        text = ByteTextEncoder(tcfg).to(device) if tcfg else None
        dcfg = dit_config(cfg.dit)
    if args.latent:
        c, f, h, w = (int(v) for v in args.latent.split(","))
    else:
        c, f, h, w = dcfg.in_channels, 1 + (bucket.frames - 1) // 4, bucket.height // 8, bucket.width // 8
    dcfg = dataclasses.replace(dcfg, in_channels=c, out_channels=c)
    model = VideoDiT(dcfg).to(device)
    if args.checkpointing:
        apply_activation_checkpointing(model)
    params = [p for p in model.parameters()] + ([p for p in text.parameters()] if text else [])
    opt = torch.optim.AdamW(params, lr=1e-4)
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    x = torch.randn(batch, c, f, h, w, device=device)
    t = torch.rand(batch, device=device) * 1000
    if text is not None:
        ids, mask = text.tokenize(
            ["a big purple triangle moving left and a blue circle staying still"] * batch
        )
        ids, mask = ids.to(device), mask.to(device)
        ltext = ids.shape[1]
    else:
        ctx = torch.randn(batch, args.text_len, dcfg.text_dim, device=device)
        mask = torch.ones(batch, args.text_len, dtype=torch.bool, device=device)
        ltext = args.text_len

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            context = text(ids, mask) if text is not None else ctx
            out = model(x, t, Cond(context=context, context_mask=mask))
            loss = out.float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(args.steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)

    pt, ph, pw = dcfg.patch_size
    n = (f // pt) * (h // ph) * (w // pw)
    d, layers = dcfg.dim, dcfg.num_layers
    fwd = 2 * linear_params(model) * n + layers * (4 * n * n * d + 4 * n * ltext * d)
    if text is not None:
        tc = text.config
        fwd += 2 * linear_params(text) * ltext + tc.num_layers * 4 * ltext * ltext * tc.dim
    flops = 3 * fwd * batch
    rate = matmul_rate(torch.bfloat16 if amp else torch.float32, device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}"
    )
    print(
        f"DiT {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {n} tokens/clip, batch {batch}"
    )
    print(
        f"step {dt * 1000:.0f} ms (median of {len(times)}): {batch / dt:.1f} samples/s, {batch * n / dt:.0f} tokens/s"
    )
    print(
        f"model {flops / dt / 1e9:.1f} GFLOP/s vs measured {args.dtype} matmul {rate / 1e9:.1f} GFLOP/s: MFU {flops / dt / rate:.1%}"
    )


if __name__ == "__main__":
    main()
