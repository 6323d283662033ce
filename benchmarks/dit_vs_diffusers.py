"""Forward-pass speed and agreement: tubelet `VideoDiT` vs diffusers `WanTransformer3DModel` on CPU.

Both models hold the same random weights (converted with `tubelet.convert.wan_transformer`).
Config: dim 384 (6 heads x 64), 8 layers, ffn 1536, 16 latent channels, text_dim 512, 32 text
tokens; latents 1 x 16 x 5 x 32 x 32 (1280 tokens). Runs alternate (tubelet, diffusers, ...)
in inference mode; medians are reported, in float32 and bfloat16 (both models cast to bf16).
"Max rel diff" is max|a - b| / max|b| over the output, b = diffusers; for bf16 both models are
also compared with the float32 diffusers output ("vs fp32 ref", max and RMS relative error).

    .venv/bin/python benchmarks/dit_vs_diffusers.py [--repeats 15] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from tubelet.diffusion.cond import Cond
from tubelet.kernels import apply_cpu_kernels


def build(seed: int = 0):
    from diffusers import WanTransformer3DModel

    from tubelet.convert.wan_transformer import convert_transformer_state_dict, dit_config_from_diffusers
    from tubelet.models.dit import VideoDiT

    torch.manual_seed(seed)
    ref = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=6,
        attention_head_dim=64,
        in_channels=16,
        out_channels=16,
        text_dim=512,
        freq_dim=256,
        ffn_dim=1536,
        num_layers=8,
    ).eval()
    with torch.no_grad():  # non-trivial norms / modulation tables too
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "scale_shift_table" in name:
                p.copy_(0.1 * torch.randn_like(p))
    cfg = dit_config_from_diffusers(dict(ref.config))
    ours = VideoDiT(cfg).eval()
    ours.load_state_dict(convert_transformer_state_dict(ref.state_dict(), cfg))
    return ours, ref


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max relative difference max|a - b| / max|b|."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def rms_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS relative difference ||a - b|| / ||b||."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15, help="timed runs per model and dtype")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ours32, ref32 = build()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 5, 32, 32, generator=g)
    t = torch.tensor([637.0])
    ctx = torch.randn(1, 32, 512, generator=g)
    with torch.inference_mode():
        ref_out32 = ref32(x, t, ctx).sample

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, latents {tuple(x.shape)}, {args.repeats} repeats"
    )
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        ours = apply_cpu_kernels(copy.deepcopy(ours32).to(dtype))  # as the pipeline loads it
        ref = copy.deepcopy(ref32).to(dtype)
        xd, ctxd = x.to(dtype), ctx.to(dtype)
        times: dict[str, list[float]] = {"tubelet": [], "diffusers": []}
        with torch.inference_mode():
            a = ours(xd, t, Cond(context=ctxd))  # warm-up (also oneDNN primitive caches)
            b = ref(xd, t, ctxd).sample
            for _ in range(args.repeats):
                for label, model in (("tubelet", ours), ("diffusers", ref)):
                    t0 = time.perf_counter()
                    model(xd, t, Cond(context=ctxd)) if label == "tubelet" else model(xd, t, ctxd)
                    times[label].append(time.perf_counter() - t0)
        mt, md = statistics.median(times["tubelet"]), statistics.median(times["diffusers"])
        print(
            f"{name:9s} tubelet {mt * 1e3:8.1f} ms   diffusers {md * 1e3:8.1f} ms   speed-up {md / mt:5.2f}x   "
            f"max rel diff {rel(a, b):.2e}   (fastest runs: {min(times['tubelet']) * 1e3:.1f} / "
            f"{min(times['diffusers']) * 1e3:.1f} ms)"
        )
        if dtype != torch.float32:
            print(
                f"{'':9s} vs fp32 ref (max / rms rel): tubelet {rel(a, ref_out32):.2e} / {rms_rel(a, ref_out32):.2e}"
                f"   diffusers {rel(b, ref_out32):.2e} / {rms_rel(b, ref_out32):.2e}"
            )


if __name__ == "__main__":
    main()
