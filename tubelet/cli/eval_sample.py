"""`tubelet eval sample`: generate clips named the VBench way for offline evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tubelet.cli.apps import eval_app


@eval_app.command("sample")
def eval_sample(
    prompts: Path = typer.Option(
        ..., "--prompts", help="Text file (one prompt per line) or jsonl with 'prompt'."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the clips and captions.jsonl."),
    model: Optional[Path] = typer.Option(  # noqa: UP045 - typer needs Optional on py3.10
        None, "--model", "-m", help="Pipeline directory or training run (default: the embedded model)."
    ),
    samples: int = typer.Option(5, "--samples", min=1, help="Clips per prompt (VBench uses 5)."),
    seed: int = typer.Option(0, "--seed", help="Clip INDEX of every prompt uses seed SEED + INDEX."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Clips generated per model call."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, ..."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Write SAMPLES clips per prompt as OUT/{prompt}-{index}.mp4 (VBench's naming) + OUT/captions.jsonl.

    Run the official VBench on OUT elsewhere, or score it here with `tubelet eval videos OUT`.
    """
    from tubelet.eval.suite import read_prompts, sample_prompts
    from tubelet.pipelines import load_pipeline

    items = read_prompts(prompts)
    pipe = load_pipeline(model, device=device)
    paths = sample_prompts(pipe, items, out, samples, seed=seed, batch_size=batch_size, progress=progress)
    typer.echo(f"wrote {len(paths)} clips ({len(items)} prompts x {samples}) to {out}")
