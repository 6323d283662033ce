"""`tubelet eval videos DIR`: score a folder of videos on VBench-style dimensions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tubelet.cli.apps import eval_app


@eval_app.command("videos")
def eval_videos(
    folder: Path = typer.Argument(
        ..., help="Folder of videos (captions.jsonl, or VBench names '{prompt}-{index}.mp4')."
    ),
    dims: str = typer.Option(
        "all",
        "--dims",
        help="Comma-separated dimensions (default: all): subject_consistency, background_consistency, "
        "temporal_flickering, motion_smoothness, dynamic_degree, aesthetic_quality, clip_text_alignment, "
        "shapes_oracle.",
    ),
    weights: Optional[Path] = typer.Option(  # noqa: UP045 - typer needs Optional on py3.10
        None,
        "--weights",
        help="Local weights directory for the model-backed dimensions (nothing is downloaded).",
    ),
    out: Path = typer.Option(Path("report"), "--out", help="Output folder for report.json and report.html."),
    device: Optional[str] = typer.Option(  # noqa: UP045
        None, "--device", help="Torch device for model-backed dimensions (default: cuda if available)."
    ),
    max_frames: Optional[int] = typer.Option(  # noqa: UP045
        None, "--max-frames", min=1, help="Read at most this many frames per video."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Score every video in FOLDER; print a table and write OUT/report.json + OUT/report.html.

    Stand-in dimensions use classical methods instead of VBench's networks: not official numbers.
    Dimensions whose weights are missing are skipped with the reason.
    """
    from tubelet.eval.report import evaluate_folder, format_table, write_report

    if device is not None:
        from tubelet.devices import resolve_device

        device = str(resolve_device(device))  # a clear error for an unknown or absent device

    def warn(name: str, reason: str) -> None:
        typer.echo(f"warning: skipping {name}: {reason}", err=True)

    run = evaluate_folder(
        folder, dims, weights=weights, device=device, max_frames=max_frames, progress=not quiet, on_skip=warn
    )
    for name, reason in run.report["errors"].items():
        typer.echo(f"warning: skipped unreadable video {name}: {reason}", err=True)
    json_path, html_path = write_report(run, out)
    typer.echo(format_table(run.report))
    typer.echo(f"wrote {json_path} and {html_path}")
