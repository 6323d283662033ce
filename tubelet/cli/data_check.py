"""`tubelet data check DIR`: count, summarise and decode-test a training folder."""

from __future__ import annotations

from pathlib import Path

import typer

from tubelet.cli.apps import data_app


@data_app.command("check")
def check(
    directory: Path = typer.Argument(
        ..., help="Dataset folder with videos/images and captions.jsonl or captions.csv."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Show a progress bar on big folders."
    ),
    video_key: str = typer.Option("video", help="Key (jsonl) or column (csv) holding the media path."),
    caption_key: str = typer.Option("caption", help="Key (jsonl) or column (csv) holding the caption."),
) -> None:
    """Check a dataset folder: counts, resolutions, frame rates, durations and unreadable files.

    Every video is probed and its first and last frames decoded; images are decoded fully.
    Exits with status 1 when any file is unreadable.
    """
    import json

    from tubelet.data.dataset import check_dataset

    report = check_dataset(directory, progress=progress, video_key=video_key, caption_key=caption_key)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        typer.echo(report.format_table())
    if not report.ok:  # the table (or JSON) on stdout lists the files; the verdict goes to stderr
        typer.echo(f"error: {report.summary_line()} (listed above)", err=True)
        raise typer.Exit(code=1)
