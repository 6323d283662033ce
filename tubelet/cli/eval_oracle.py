"""`tubelet eval oracle`: score shapes-world prompt adherence of a folder of videos."""

from __future__ import annotations

from pathlib import Path

import typer

from tubelet.cli.apps import eval_app


@eval_app.command("oracle")
def oracle(
    videos: Path = typer.Option(
        ..., "--videos", help="Folder with captions.jsonl ({video, caption} per line)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Report JSON path (default: VIDEOS/oracle.json)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Score every caption in VIDEOS/captions.jsonl against its video with the exact shapes-world oracle.

    Prints a table (per attribute and language) and writes the full report, per clip, as JSON.
    """
    import json

    from tubelet.errors import DataError
    from tubelet.eval.oracle import evaluate_folder, format_table

    if not videos.is_dir():
        raise DataError(f"{videos}: not a directory; expected a folder with captions.jsonl")
    report = evaluate_folder(videos, progress=progress)
    path = out if out is not None else videos / "oracle.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    typer.echo(format_table(report))
    typer.echo(f"report: {path}")
