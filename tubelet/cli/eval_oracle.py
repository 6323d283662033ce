"""`tubelet eval oracle`: shapes-world prompt adherence of a folder of videos, or of a model on a suite."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tubelet.cli.apps import eval_app


@eval_app.command("oracle")
def oracle(
    videos: Optional[Path] = typer.Option(  # noqa: UP045 - typer needs Optional on py3.10
        None, "--videos", help="Folder with captions.jsonl ({video, caption} per line)."
    ),
    suite: Optional[Path] = typer.Option(  # noqa: UP045
        None,
        "--suite",
        help="Prompt suite jsonl ({prompt, seed[, lang]} per line), or a shipped suite by name "
        "(shapes-heldout, shapes-heldout-reseed): generate, then score.",
    ),
    model: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--model", "-m", help="With --suite: pipeline directory or training run (default: embedded)."
    ),
    out: Optional[Path] = typer.Option(  # noqa: UP045
        None,
        "--out",
        "-o",
        help="Report JSON path (default: VIDEOS/oracle.json; with --suite VIDEOS_OUT/oracle.json or "
        "outputs/oracle-<suite>.json).",
    ),
    videos_out: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--videos-out", help="With --suite: also write the generated clips + captions.jsonl here."
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="With --suite: prompts per model call."),
    steps: Optional[int] = typer.Option(  # noqa: UP045
        None, "--steps", min=1, help="With --suite: sampling steps (default: the model's)."
    ),
    guidance: Optional[float] = typer.Option(  # noqa: UP045
        None, "--guidance", help="With --suite: classifier-free guidance scale (default: the model's)."
    ),
    sampler: Optional[str] = typer.Option(  # noqa: UP045
        None, "--sampler", help="With --suite: euler | unipc | dpmpp_2m (default: the model's)."
    ),
    limit: Optional[int] = typer.Option(  # noqa: UP045
        None, "--limit", min=1, help="With --suite: only the first N prompts (a quick check)."
    ),
    device: str = typer.Option("auto", "--device", help="With --suite: auto (cuda if available), cpu, cuda."),
    dtype: str = typer.Option(
        "auto", "--dtype", help="With --suite: the DiT's dtype (auto, float32, bfloat16, float16)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Score shapes-world prompt adherence with the exact oracle; print a table, write a JSON report.

    --videos DIR: score every caption in DIR/captions.jsonl against its video.

    --suite FILE: generate every prompt of the suite (model defaults, its own seed), then score it.
    """

    from tubelet.errors import DataError, TubeletError
    from tubelet.recipes.shapes.oracle import evaluate_folder, format_table

    if (videos is None) == (suite is None):
        raise TubeletError("pass either --videos DIR (score a folder) or --suite FILE (generate, then score)")
    if videos is not None:
        suite_only = (("--model", model), ("--videos-out", videos_out), ("--steps", steps), ("--guidance", guidance),
                      ("--sampler", sampler), ("--limit", limit))  # fmt: skip
        for flag, value in suite_only:
            if value is not None:
                raise TubeletError(f"{flag} only applies to --suite")
        if not videos.is_dir():
            raise DataError(f"{videos}: not a directory; expected a folder with captions.jsonl")
        report = evaluate_folder(videos, progress=progress)
        path = out if out is not None else videos / "oracle.json"
    else:
        assert suite is not None
        from tubelet.pipelines import load_pipeline
        from tubelet.recipes.shapes import suite_path
        from tubelet.recipes.shapes.oracle import evaluate_model, read_suite

        suite = suite_path(suite)
        items = read_suite(suite)  # a broken suite fails before the model loads
        if limit is not None:
            items = items[:limit]
        from tubelet.devices import resolve_dtype

        pipe = load_pipeline(model, device=device, dtype=resolve_dtype(dtype, device))
        overrides = {"num_inference_steps": steps, "guidance_scale": guidance, "sampler": sampler}
        report = evaluate_model(
            pipe, items, batch_size=batch_size, videos_out=videos_out, progress=progress,
            **{k: v for k, v in overrides.items() if v is not None},
        )  # fmt: skip
        report["suite"] = str(suite)
        default = (
            videos_out / "oracle.json"
            if videos_out is not None
            else Path("outputs") / f"oracle-{suite.stem}.json"
        )
        path = out if out is not None else default
    from tubelet.core.files import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, report, indent=1)
    typer.echo(format_table(report))
    typer.echo(f"report: {path}")
