"""`tubelet lora ...`: merge LoRAs into a model directory, convert between formats, inspect a file."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from tubelet.cli.apps import lora_app


class LoRAFormat(str, Enum):
    diffusers = "diffusers"
    comfyui = "comfyui"


@lora_app.command("merge")
def merge(
    model: Path = typer.Argument(
        ..., help="The tubelet pipeline (or transformer) directory the LoRAs are for."
    ),
    lora: list[str] = typer.Option(
        ..., "--lora", help="A LoRA file or directory, optionally :SCALE; repeatable."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The merged model directory (new)."),
) -> None:
    """Fold LoRAs into a copy of MODEL: a plain model that needs no LoRA at generation time."""
    from tubelet.cli.generate import parse_lora_arg
    from tubelet.models.lora import merge_lora_dir

    loras = [parse_lora_arg(v) for v in lora]
    done = merge_lora_dir(model, loras, out, log=lambda m: typer.echo(m, err=True))
    typer.echo(str(done.resolve()))


@lora_app.command("convert")
def convert(
    src: Path = typer.Argument(
        ..., help="A LoRA file (diffusers/PEFT, ComfyUI/Wan, kohya) or LoRA directory."
    ),
    dst: Path = typer.Argument(..., help="The output .safetensors file."),
    to: LoRAFormat = typer.Option(
        ..., "--to", help="diffusers (PEFT keys) or comfyui (original Wan keys + alpha)."
    ),
) -> None:
    """Rewrite a LoRA in another format (the same update, other key names)."""
    from tubelet.core.files import check_output_location
    from tubelet.models.lora import LoRAError, convert_lora_file

    if dst.suffix != ".safetensors":
        raise LoRAError(f"{dst}: the output must be a .safetensors file")
    check_output_location(dst, kind="file", what="LoRA file")
    lf = convert_lora_file(src, dst, fmt=to.value)
    typer.echo(f"{len(lf.layers)} layers ({lf.source_format} -> {to.value})", err=True)
    typer.echo(str(dst.resolve()))


@lora_app.command("inspect")
def inspect(src: Path = typer.Argument(..., help="A LoRA file or LoRA directory.")) -> None:
    """Print what a LoRA file holds: its format, layers, ranks and alphas."""
    from tubelet.models.lora import read_lora_file

    lf = read_lora_file(src)
    ranks = sorted({t["A"].shape[0] for t in lf.layers.values() if "A" in t})
    alphas = sorted({round(float(t["alpha"]), 6) for t in lf.layers.values() if "alpha" in t})
    blocks = sorted({int(k.split(".")[1]) for k in lf.layers if k.startswith("blocks.")})
    kinds = sorted({k.split(".", 2)[2] if k.startswith("blocks.") else k for k in lf.layers})
    typer.echo(f"format: {lf.source_format}")
    typer.echo(f"layers: {len(lf.layers)} ({', '.join(kinds)})")
    typer.echo(f"blocks: {f'{blocks[0]}..{blocks[-1]}' if blocks else 'none'} ({len(blocks)})")
    typer.echo(f"ranks: {ranks or 'none (full deltas only)'}; alphas: {alphas or 'none (= rank)'}")
