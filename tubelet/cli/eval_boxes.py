"""`tubelet eval boxes`: how well a box-controlled model follows box tracks (shapes world)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from tubelet.cli.apps import eval_app


@eval_app.command("boxes")
def boxes(
    model: Path = typer.Option(
        ..., "--model", "-m", help="A pipeline directory with box_adapter/ (or a run)."
    ),
    suite: Path = typer.Option(
        Path("boxes-heldout"), "--suite", help="Box suite jsonl, or a shipped one by name (boxes-heldout)."
    ),
    out: Optional[Path] = typer.Option(  # noqa: UP045 - typer needs Optional on py3.10
        None, "--out", "-o", help="Report JSON (default: outputs/boxes-<suite>.json)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N clips."),  # noqa: UP045
    steps: int | None = typer.Option(None, "--steps", min=1, help="Sampling steps (default: the model's)."),
    guidance: float | None = typer.Option(
        None, "--guidance", help="Guidance scale (default: the model's; box control often wants less)."
    ),
    box_guidance: str | None = typer.Option(
        None,
        "--box-guidance",
        help="joint (guide towards text and boxes: the default) or text (both branches follow the boxes).",
    ),
    baseline: bool = typer.Option(
        True, "--baseline/--no-baseline", help="Also generate every prompt without its boxes (what they add)."
    ),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, ..."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Generate the box suite with its boxes (and without), find every object in every frame with the
    oracle, and report IoU, AP@0.5 on keyframes, soft-box containment and colour/shape accuracy."""
    from tubelet.core.files import atomic_write_json, check_output_location
    from tubelet.pipelines import load_pipeline
    from tubelet.recipes.shapes import suite_path
    from tubelet.recipes.shapes.box_eval import evaluate_boxes, format_box_table, read_box_suite

    path = suite_path(suite)
    items = read_box_suite(path)[:limit]
    report_path = out if out is not None else Path("outputs") / f"boxes-{path.stem}.json"
    check_output_location(report_path, kind="file", what="report")
    if box_guidance is not None and box_guidance not in ("joint", "text"):
        from tubelet.errors import TubeletError

        raise TubeletError(f"--box-guidance must be joint or text, got {box_guidance!r}")
    pipe = load_pipeline(model, device=device)
    if box_guidance is not None:
        pipe.config = dataclasses.replace(pipe.config, box_guidance=box_guidance)
    settings: dict[str, object] = {"num_inference_steps": steps} if steps is not None else {}
    if guidance is not None:
        settings["guidance_scale"] = guidance
    report = evaluate_boxes(pipe, items, baseline=baseline, progress=progress, **settings)
    report.update(suite=str(path), model=str(model), clips=len(items), box_guidance=pipe.config.box_guidance)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report_path, report, indent=1)
    typer.echo(format_box_table(report))
    typer.echo(f"report: {report_path}")
