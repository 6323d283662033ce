"""Memory of Wan2.1 1.3B / 14B at 480p and 720p, 81 frames: weights, activations, VAE peak, and the
device peak with and without offload / quantization. ESTIMATED on a CPU-only machine:

    python benchmarks/memory_table.py [--measure-tokens 1024,4096] [--vae-sizes 64x96,96x160]

* weights: exact, parameter counts of the architectures built on the meta device (the DiT presets,
  transformers' UMT5-XXL encoder, the Wan2.1 VAE), times bytes per parameter (bf16 2, int8/fp8 1 +
  the per-row scales of the quantized linears);
* DiT activations: measured, the peak resident memory one bf16 block adds on the CPU at two token
  counts (fresh processes), as bytes per token of the CFG batch of 2, extrapolated linearly (the
  attention runs through SDPA's memory-efficient kernels, linear in tokens) to 21 x 60 x 104 / 4 =
  32,760 tokens (480x832) and 21 x 90 x 160 / 4 = 75,600 tokens (720x1280); the 14B's per-token
  bytes are scaled from the 1.3B's by the width;
* VAE peak: measured, the Wan2.1 VAE (base 96) decoding 17 frames at two `--vae-sizes`, what decoding
  adds, as bytes per output pixel (the slope between the two), scaled by pixel count (the decode is flat in clip length: benchmarks/vae_memory.py) plus the
  81-frame float32 output; tiled = one 32-latent (256x256-pixel) tile's decode at the same bytes per
  pixel, plus the output.

Device peak: none = everything resident + the larger of DiT and VAE activations; model offload = the
largest single stage (text encoder alone; DiT + its activations; VAE + its decode); block offload =
the text encoder's embeddings + 2 of its blocks, or 2 DiT blocks + the non-block DiT weights +
activations, or the tiled VAE stage.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys

GB = 2**30


def rss() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024


def child_block(tokens: int) -> None:
    import torch

    from tubelet.models.dit import DIT_PRESETS, DiTBlock, DiTState
    from tubelet.models.layers import rope_angles_3d, rope_freqs

    cfg = DIT_PRESETS["wan2.1-1.3b"]
    from tubelet.models.layers import set_attention_backend

    # SDPA's fused kernels (flash / memory-efficient) are linear in tokens, as on a GPU; tubelet's
    # CPU bf16 fallback materialises the scores and would make the slope quadratic
    blk = set_attention_backend(DiTBlock(cfg).to(torch.bfloat16).eval(), "sdpa")
    x = torch.randn(2, 1, tokens, cfg.dim, dtype=torch.bfloat16)
    state = DiTState(
        context=torch.randn(2, 512, cfg.dim, dtype=torch.bfloat16),
        context_mask=None,
        time_mod=torch.randn(2, 1, 6, cfg.dim),
        temb=torch.randn(2, 1, cfg.dim),
        rope=rope_freqs(rope_angles_3d((1, 1, tokens), cfg.head_dim), "cpu"),
        grid=(1, 1, tokens),
        shape=(2, 16, 1, 1, tokens),
    )
    before = rss()
    with torch.inference_mode():
        blk(x, state)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"tokens": tokens, "added": peak - before}))


def child_vae(size: str, tile: int) -> None:
    import torch

    from tubelet.models.vae import VAE_PRESETS, CausalVideoVAE
    from tubelet.models.vae_tiling import VAETiling, decode_tiled

    vae = CausalVideoVAE(VAE_PRESETS["wan2.1"]).eval()
    h, w = (int(v) for v in size.split("x"))
    z = torch.randn(1, 16, 5, h // 8, w // 8)
    before = rss()
    with torch.no_grad():
        out = vae.decode(z) if not tile else decode_tiled(vae, z, VAETiling(tile, 8))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"added": peak - before - out.numel() * 4}))  # without the output clip


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def param_counts() -> dict[str, dict[str, int]]:
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    from tubelet.models.dit import DIT_PRESETS, VideoDiT
    from tubelet.models.vae import VAE_PRESETS, CausalVideoVAE

    out = {}
    with torch.device("meta"):
        for name in ("wan2.1-1.3b", "wan2.1-14b"):
            m = VideoDiT(DIT_PRESETS[name])
            linear = sum(
                mod.weight.numel()
                for blk in m.blocks
                for mod in blk.modules()
                if isinstance(mod, torch.nn.Linear)
            )
            rows = sum(
                mod.weight.shape[0]
                for blk in m.blocks
                for mod in blk.modules()
                if isinstance(mod, torch.nn.Linear)
            )
            block = sum(p.numel() for p in m.blocks[0].parameters())
            out[name] = {"total": m.num_parameters(), "block_linear": linear, "rows": rows, "block": block,
                         "blocks": len(m.blocks), "dim": m.config.dim}  # fmt: skip
        # Wan2.1's text encoder: the umT5-XXL encoder (google/umt5-xxl sizes)
        te = UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                         num_heads=64, feed_forward_proj="gated-gelu"))  # fmt: skip
        out["umt5-xxl"] = {"total": sum(p.numel() for p in te.parameters()),
                            "block": sum(p.numel() for p in te.encoder.block[0].parameters()),
                            "blocks": len(te.encoder.block)}  # fmt: skip
        out["vae"] = {"total": sum(p.numel() for p in CausalVideoVAE(VAE_PRESETS["wan2.1"]).parameters())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs="*")
    ap.add_argument("--measure-tokens", default="1024,4096")
    ap.add_argument("--vae-sizes", default="64x96,96x160")
    args = ap.parse_args()
    if args.child is not None:
        kind, *rest = args.child
        child_block(int(rest[0])) if kind == "block" else child_vae(rest[0], int(rest[1]))
        return

    counts = param_counts()
    t1, t2 = (int(v) for v in args.measure_tokens.split(","))
    a1, a2 = run_child("block", str(t1))["added"], run_child("block", str(t2))["added"]
    per_token = (a2 - a1) / (t2 - t1)  # bytes per token of the CFG batch, 1.3B width, bf16
    (s1, p1), (s2, p2) = [(s, math.prod(int(v) for v in s.split("x"))) for s in args.vae_sizes.split(",")]
    # bytes per output pixel of a 17-frame decode: the slope between two sizes (fixed costs cancel)
    vae_whole = (run_child("vae", s2, "0")["added"] - run_child("vae", s1, "0")["added"]) / (p2 - p1)
    vae_tile = vae_whole * 256 * 256  # a tile of 32 latents decodes 256x256 pixels at a time
    print(f"measured: DiT block activations {per_token / 1024:.1f} KiB per token (batch 2, bf16, 1.3B width); "
          f"VAE decode {vae_whole:.0f} B per output pixel; one 32-latent tile {vae_tile / 2**20:.0f} MiB")  # fmt: skip
    te = counts["umt5-xxl"]["total"] * 2
    te_block = counts["umt5-xxl"]["block"] * 2
    te_streamed = te - counts["umt5-xxl"]["blocks"] * te_block + 2 * te_block  # embeddings + 2 blocks
    vae_w = counts["vae"]["total"] * 4  # the VAE runs in float32
    sizes = {"480p": (480, 832, 32760), "720p": (720, 1280, 75600)}
    print("| model | size | text enc. | DiT weights bf16 / int8 | DiT activations | VAE decode (tiled) | peak: none | model offload | blocks offload | blocks + int8 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("wan2.1-1.3b", "wan2.1-14b"):
        c = counts[name]
        dit_bf16 = c["total"] * 2
        dit_int8 = dit_bf16 - c["block_linear"] + c["rows"] * 2 * 2  # int8 data + bf16 scales (approx.)
        block_bf16 = c["block"] * 2
        block_int8 = block_bf16 * dit_int8 / dit_bf16
        rest = dit_bf16 - c["blocks"] * block_bf16
        width = c["dim"] / counts["wan2.1-1.3b"]["dim"]
        for size, (h, w, tokens) in sizes.items():
            act = per_token * width * tokens
            out_clip = 81 * h * w * 3 * 4
            vae_act = vae_whole * h * w + out_clip
            vae_tiled = vae_tile + out_clip
            none = te + dit_bf16 + vae_w + max(act, vae_act)
            model = max(te, dit_bf16 + act, vae_w + vae_act)
            blocks = max(te_streamed, rest + 2 * block_bf16 + act, vae_w + vae_tiled)
            blocks_q = max(te_streamed, rest + 2 * block_int8 + act, vae_w + vae_tiled)
            print(f"| {name} | {size} | {te / GB:.1f} | {dit_bf16 / GB:.1f} / {dit_int8 / GB:.1f} | {act / GB:.1f} | "
                  f"{vae_act / GB:.1f} ({vae_tiled / GB:.1f}) | {none / GB:.1f} | {model / GB:.1f} | {blocks / GB:.1f} | "
                  f"{blocks_q / GB:.1f} |")  # fmt: skip
    print(f"GiB; estimated (see the module doc). Under block offload the text encoder streams its blocks too: "
          f"{te_streamed / GB:.1f} GiB while it encodes.")  # fmt: skip


if __name__ == "__main__":
    main()
