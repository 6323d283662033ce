"""`tubelet convert ...`: external checkpoints -> tubelet model directories."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from tubelet.cli.apps import convert_app


class DTypeChoice(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@convert_app.command("wan")
def wan(
    src: Path = typer.Argument(
        ...,
        help="diffusers Wan2.1 pipeline directory (model_index.json, transformer/, vae/, text_encoder/, "
        "tokenizer/) or a single WanTransformer3DModel / AutoencoderKLWan directory.",
    ),
    dst: Path = typer.Argument(..., help="Output tubelet pipeline (or component) directory."),
    dtype: Optional[DTypeChoice] = typer.Option(  # noqa: UP045 - typer needs Optional on py3.10
        None, "--dtype", help="Cast floating weights to this dtype (default: keep the stored dtypes)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists and is not empty."),
) -> None:
    """Convert a diffusers Wan2.1 checkpoint into a tubelet model directory."""
    from tubelet.convert.wan import convert_wan

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    out = convert_wan(
        src, dst, dtype=dtype.value if dtype is not None else None, overwrite=overwrite, log=log
    )
    typer.echo(str(out))
