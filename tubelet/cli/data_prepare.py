"""`tubelet data prepare SRC... --out DATASET`: raw footage -> a training dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from tubelet.cli.apps import data_app


@data_app.command("prepare")
def prepare(
    sources: list[Path] = typer.Argument(..., help="Video files and/or folders of videos (walked)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Dataset folder to write (new or empty; see --resume)."
    ),
    min_seconds: float = typer.Option(2.0, help="Drop clips shorter than this (too_short)."),
    max_seconds: float = typer.Option(10.0, help="Split longer scenes into equal clips at most this long."),
    clip_frames: int = typer.Option(
        0, help="Cut scenes into clips of exactly this many frames instead (0: use --max-seconds)."
    ),
    fps: float | None = typer.Option(None, help="Frame rate of the clips (default: each source's own)."),
    min_size: int = typer.Option(256, help="Drop clips whose content short side is below this (too_small)."),
    max_size: int = typer.Option(720, help="Downscale clips to this short side (0: keep the size)."),
    detector: str = typer.Option("content", help="Scene detector: content or adaptive (PySceneDetect)."),
    threshold: float = typer.Option(27.0, help="Content detector threshold (mean HSV difference)."),
    adaptive_threshold: float = typer.Option(3.0, help="Adaptive detector threshold (score ratio)."),
    min_scene_seconds: float = typer.Option(0.5, help="No two scene cuts closer than this."),
    border_luma: float = typer.Option(
        16.0, help="Rows/columns staying at or below this mean luma are border."
    ),
    max_border: float = typer.Option(
        0.5, help="Drop clips with more of the frame black than this (borders)."
    ),
    min_motion: float = typer.Option(0.5, help="Drop clips moving less (static), % of width per second."),
    max_motion: float = typer.Option(
        100.0, help="Drop clips moving more (extreme_motion), % of width per s."
    ),
    ocr: bool = typer.Option(
        False, "--ocr", help="Drop clips with on-screen text (subtitles, logos); needs the `ocr` extra."
    ),
    max_text: float = typer.Option(0.02, help="With --ocr: drop clips whose text covers more of a frame."),
    dup_distance: float = typer.Option(
        8.0, help="Near-duplicate when the pHash distance is at most this (bits)."
    ),
    captions: Path | None = typer.Option(
        None, help="CSV (video,caption) or JSONL mapping source -> caption; else each source's .txt sidecar."
    ),
    keep_uncaptioned: bool = typer.Option(
        False, "--keep-uncaptioned", help='Keep clips without a caption (caption "", unconditional training).'
    ),
    crf: int = typer.Option(18, help="H.264 quality of the written clips (0..51, lower is better)."),
    workers: int = typer.Option(1, help="Processes analysing sources and writing clips (same output)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run into --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Cut raw videos into scored, filtered training clips: captions.jsonl + clips/ + prepare-report.html.

    Scenes are found with PySceneDetect, cut into clips, filtered (too short, too small, black
    borders, static, extreme motion, on-screen text with --ocr, near-duplicates, no caption) and re-encoded once to H.264.
    Sources are only read. A source that cannot be read is reported and skipped.
    """
    from tubelet.data.prepare import PrepareOptions, prepare_dataset

    opts = PrepareOptions(
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        clip_frames=clip_frames,
        fps=fps,
        min_size=min_size,
        max_size=max_size,
        detector=detector,
        threshold=threshold,
        adaptive_threshold=adaptive_threshold,
        min_scene_seconds=min_scene_seconds,
        border_luma=border_luma,
        max_border=max_border,
        min_motion=min_motion,
        max_motion=max_motion,
        ocr=ocr,
        max_text=max_text,
        dup_distance=dup_distance,
        keep_uncaptioned=keep_uncaptioned,
        crf=crf,
    )
    summary = prepare_dataset(
        sources, out, opts, captions=captions, workers=workers, resume=resume, progress=progress
    )
    typer.echo(summary.format_text())
    if summary.failed:  # the summary on stdout names them; the verdict goes to stderr
        typer.echo(f"warning: {len(summary.failed)} unreadable sources skipped (listed above)", err=True)
    if summary.uncaptioned and not keep_uncaptioned:
        typer.echo(
            f"warning: {len(summary.uncaptioned)} clips dropped for having no caption "
            "(listed in the report; keep them with --keep-uncaptioned)",
            err=True,
        )
