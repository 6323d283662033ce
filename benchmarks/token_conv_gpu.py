"""Cost of the DiT's depthwise token convolution (`DiTConfig.conv_kernel`) in a training step.

    python benchmarks/token_conv_gpu.py [BATCH]            # default 256; meant for a CUDA GPU

For `shapes-latent-conv` (64 tokens) and the same DiT with (4, 1, 1) patches (256 tokens; the
`shapes-latent-fine` of run M) on 8 x 16 x 8 x 8 latents,
with conv_kernel 3 in its dense per-channel-matrix form (the default for grids of up to 256 tokens,
`tubelet.models.layers.depthwise_conv3d_tokens`), conv_kernel 3 through `F.conv3d` (cuDNN's grouped
convolution; the form used before), and conv_kernel 0: milliseconds per forward + backward + AdamW
step (bfloat16 autocast), then
on a GPU the top kernels of one profiled step, and `ShapesTextEncoder.encode` time for BATCH captions
(the trainer's per-step text work). Results: docs/performance.md.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

import tubelet.models.layers as layers
from tubelet import registry
from tubelet.diffusion.cond import Cond
from tubelet.models.dit import VideoDiT

CONV = registry.lookup("dit_preset", "shapes-latent-conv")  # the shapes recipe's DiT
CONFIGS = {"shapes-latent-conv": CONV, "shapes-latent-fine": dataclasses.replace(CONV, patch_size=(4, 1, 1))}

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def make_step(name: str, conv: int, batch: int):
    cfg = dataclasses.replace(CONFIGS[name], in_channels=8, out_channels=8, conv_kernel=conv)
    model = VideoDiT(cfg).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    x = torch.randn(batch, 8, 16, 8, 8, device=DEV)
    ctx = torch.randn(batch, 3, 256, device=DEV)
    t = torch.rand(batch, device=DEV)

    def step() -> None:
        with torch.autocast(DEV.type, dtype=torch.bfloat16):
            y = model(x, t, Cond(context=ctx))
        (y.float() - x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    print(
        f"device {torch.cuda.get_device_name() if DEV.type == 'cuda' else 'cpu'}, torch {torch.__version__}"
    )
    for name in CONFIGS:
        for variant, conv in (("dense", 3), ("conv3d", 3), ("none", 0)):
            layers.TOKEN_CONV_DENSE_MAX_TOKENS = 0 if variant == "conv3d" else 256
            step = make_step(name, conv, batch)
            for _ in range(3):
                step()
            n = 10 if DEV.type == "cuda" else 2
            _sync()
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            _sync()
            dt = (time.perf_counter() - t0) / n
            print(
                f"{name} conv_kernel={conv} ({variant}) batch {batch}: {dt * 1e3:.1f} ms/step, "
                f"{batch / dt:.0f} clips/s"
            )
    layers.TOKEN_CONV_DENSE_MAX_TOKENS = 256
    if DEV.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        step = make_step("shapes-latent-fine", 3, batch)
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            _sync()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))

    from tubelet.recipes.shapes.text import ShapesTextEncoder

    te = ShapesTextEncoder.from_pretrained("tubelet/assets/shapes-t2v/text_encoder").to(DEV)
    caps = [
        "a big blue square moving up and a small yellow triangle staying still, on a white background",
        "一个小的紫色圆形向下移动和一个橙色正方形向右移动，黑色背景",
    ] * (batch // 2)
    for _ in range(2):
        te.encode(caps)
    _sync()
    t0 = time.perf_counter()
    for _ in range(5):
        te.encode(caps)
    _sync()
    print(f"ShapesTextEncoder.encode of {len(caps)} captions: {(time.perf_counter() - t0) / 5 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
