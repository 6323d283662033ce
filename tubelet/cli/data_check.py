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
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Training YAML: also show how its `data:` section buckets and filters the folder.",
    ),
    preset: str | None = typer.Option(
        None, "--preset", "-p", help="Training preset: also show how its `data:` section buckets the folder."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a key of that config, e.g. --set 'data.filters=[\"motion >= 1\"]'."
    ),
) -> None:
    """Check a dataset folder: counts, resolutions, frame rates, durations and unreadable files.

    Every video is probed and its first and last frames decoded; images are decoded fully.
    With --config or --preset, also the samples each training bucket gets, the files too short for
    every bucket and the captions lines each of `data.filters` removes.
    Exits with status 1 when any file is unreadable.
    """
    import json

    from tubelet.data.dataset import VideoDataset, check_dataset

    ds = None
    if config is not None or preset is not None or set_:
        from tubelet.cli.train import _parse_set
        from tubelet.train.config import resolve_train_config

        data_cfg = resolve_train_config(preset, config, _parse_set(set_)).data
        if video_key != "video":  # the options win over the config only when given
            data_cfg.video_key = video_key
        if caption_key != "caption":
            data_cfg.caption_key = caption_key
        ds = VideoDataset(directory, data_cfg, progress=progress)
    report = check_dataset(directory, progress=progress, video_key=video_key, caption_key=caption_key)
    if as_json:
        out = report.to_dict()
        if ds is not None:
            out["training"] = ds.stats() | {"buckets": [vars(b) for b in ds.buckets]}
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        typer.echo(report.format_table())
        if ds is not None:
            typer.echo(ds.bucket_table())
    if not report.ok:  # the table (or JSON) on stdout lists the files; the verdict goes to stderr
        typer.echo(f"error: {report.summary_line()} (listed above)", err=True)
        raise typer.Exit(code=1)
