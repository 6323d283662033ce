"""Does a text-to-video model use its prompt? Diagnostics for shapes-world models.

    python scripts/probe_prompt_use.py MODEL_DIR [--s 0.99 0.97 0.9 0.8 0.6]

For held-out clips (`make_clip(900000 + i)`), noised to level s, it prints:
- background: the mean of the x0 estimate (0-255) when only the background word changes
  (black / white / gray): a model that reads its prompt separates them at s near 1;
- object colour: the mean colour of the x0 estimate over the object's pixels of a one-object clip when
  only the colour word changes (red / blue / green / yellow);
- cross-attention: the mean |output| of each block's cross-attention against the residual stream,
  and how much it moves when the colour word changes.
Works for pixel-space models with x0 or velocity prediction (x0_hat = x_s - s * v).
"""

from __future__ import annotations

import argparse

import torch

from tubelet.media import frames_to_unit
from tubelet.pipelines import TextToVideoPipeline
from tubelet.recipes.shapes import make_clip


def _clip(one_object: bool) -> tuple[torch.Tensor, object]:
    for i in range(900000, 900200):
        clip = make_clip(i, frames=16)
        if not one_object or len(clip.scene.spec.objects) == 1:
            x0 = frames_to_unit(torch.from_numpy(clip.frames)).permute(3, 0, 1, 2)[None]
            return x0, clip
    raise RuntimeError("no one-object clip found")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--s", type=float, nargs="+", default=[0.99, 0.97, 0.9, 0.8, 0.6])
    args = ap.parse_args()
    pipe = TextToVideoPipeline.from_pretrained(args.model)
    dit, te = pipe.transformer.float().eval(), pipe.text_encoder.float().eval()

    def x0_hat(xs: torch.Tensor, s: float, prompt: str) -> torch.Tensor:
        emb = te.encode([prompt])
        with torch.no_grad():
            v = dit(xs, torch.tensor([1000.0 * s]), emb.context, emb.mask)
        return (xs - s * v)[0]  # (3, F, H, W)

    x0, clip = _clip(one_object=True)
    obj = clip.scene.spec.objects[0]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    bg = x0[0, :, 0, 0, 0]
    mask = (x0[0] - bg[:, None, None, None]).abs().sum(0) > 0.1  # (F, H, W) object pixels
    base = clip.captions["en"].split(",")[0]
    print(f"clip: {clip.captions['en']!r}; true object colour {obj.color}")
    for s in args.s:
        xs = (1 - s) * x0 + s * noise
        bgs = [
            x0_hat(xs, s, f"{base}, on a {b} background").mean().item() for b in ("black", "white", "gray")
        ]
        cols = []
        for c in ("red", "blue", "green", "yellow"):
            rgb = x0_hat(xs, s, base.replace(obj.color, c))[:, mask].mean(1)
            cols.append("/".join(str(round((v + 1) * 127.5)) for v in rgb.tolist()))
        bg_txt = " ".join(f"{round((m + 1) * 127.5)}" for m in bgs)
        print(
            f"s={s:<5} background black/white/gray: {bg_txt:<12} object colour red|blue|green|yellow: {' | '.join(cols)}"
        )

    outs: dict[int, list[torch.Tensor]] = {}
    res: dict[int, torch.Tensor] = {}
    hooks = []

    def keep_output(i: int):
        def hook(module, args, out):  # returns None: the output is left unchanged
            outs.setdefault(i, []).append(out.detach().clone())

        return hook

    def keep_input(i: int):
        def hook(module, args, out):
            res.setdefault(i, args[0].detach().clone())

        return hook

    for i, blk in enumerate(dit.blocks):
        hooks.append(blk.cross_attn.register_forward_hook(keep_output(i)))
        hooks.append(blk.register_forward_hook(keep_input(i)))
    xs = 0.1 * x0 + 0.9 * noise
    for c in ("red", "blue"):
        x0_hat(xs, 0.9, base.replace(obj.color, c))
    for h in hooks:
        h.remove()
    print("cross-attention at s=0.9 (block: |out|, |residual|, |out(red) - out(blue)|):")
    for i in sorted(outs):
        a, b = outs[i]
        print(f"  {i}: {a.abs().mean():.4f}  {res[i].abs().mean():.3f}  {(a - b).abs().mean():.5f}")


if __name__ == "__main__":
    main()
