"""`tubelet train` and `tubelet data cache`."""

from __future__ import annotations

from pathlib import Path

import typer

from tubelet.cli.apps import app, data_app


def _parse_set(values: list[str]) -> dict[str, object]:
    from tubelet.core.parsing import check_text, parse_yaml
    from tubelet.errors import ConfigError

    out: dict[str, object] = {}
    for item in values:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. optim.lr=1e-4), got {item!r}")
        key, raw = item.split("=", 1)
        check_text(item, f"--set {key}", error=ConfigError)
        if not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. optim.lr=1e-4), got {item!r}")
        value = parse_yaml(raw, f"--set {key}", error=ConfigError)
        if isinstance(value, str):  # YAML 1.1 reads "8e-5" as a string; users mean a number
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


@app.command("train")
def train_cmd(
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Run directory (checkpoints, metrics, samples, model); default: the preset's out_dir.",
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML training config."),
    preset: str | None = typer.Option(
        None, "--preset", "-p", help="Named training preset (see `tubelet presets`)."
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Dataset directory (videos + captions.jsonl); default: the preset's data_dir.",
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    save_every: int | None = typer.Option(None, "--save-every", help="Checkpoint every N steps."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
    parallel: str | None = typer.Option(None, "--parallel", help="none | ddp | fsdp (under torchrun)."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | mps | ..."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override any config key: --set optim.lr=1e-4 (repeatable)."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (logs only)."),
) -> None:
    """Train a model (DiT or VAE) on a dataset folder or a latent cache.

    A recipe's stage preset names its inputs and run directory, so `tubelet train --preset NAME`
    runs the stage; a missing input is an error naming the command that makes it.
    """
    import logging

    from tubelet.train.config import resolve_run_paths, resolve_train_config
    from tubelet.train.trainer import default_num_threads, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = _parse_set(set_)
    for key, value in (
        ("max_steps", max_steps),
        ("save_every", save_every),
        ("seed", seed),
        ("parallel", parallel),
        ("device", device),
    ):
        if value is not None:
            overrides[key] = value
    cfg = resolve_train_config(preset, config, overrides)
    data, out = resolve_run_paths(cfg, data, out)
    default_num_threads()
    from tubelet.train.parallel import shutdown_distributed

    try:
        result = train(cfg, data, out, resume=resume, progress=not no_progress)
    except BaseException:
        shutdown_distributed(wait=False)
        raise
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        typer.echo(f"finished at step {result.step}; {result.bad_steps} skipped non-finite steps")
        if result.skipped_files:
            typer.echo(f"{result.skipped_files} unreadable file(s) were skipped (see the log)")
        if result.model_dir is not None:
            typer.echo(str(result.model_dir.resolve()))
    shutdown_distributed()


@app.command("presets")
def presets_cmd() -> None:
    """List the training presets (the installed recipes' included) and where each stage writes."""
    from tubelet import registry

    for name in registry.names("train_preset"):
        cfg = registry.lookup("train_preset", name)
        where = f" out_dir={cfg.out_dir}" if cfg.out_dir else ""
        typer.echo(f"{name:26s} task={cfg.task} max_steps={cfg.max_steps}{where}")


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="Run directory of a DiT training run."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    step: int | None = typer.Option(None, "--step", help="Checkpoint step (default: the latest)."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Export the raw weights instead of the EMA ones."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float16 | bfloat16 (stored weights)."),
) -> None:
    """Export a model directory from a run's checkpoint (e.g. while it is still training)."""
    import torch

    from tubelet.errors import TubeletError
    from tubelet.train.trainer import export_checkpoint

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise TubeletError(f"--dtype {dtype!r}: choose one of {sorted(dtypes)}")
    d = export_checkpoint(run, out, step=step, use_ema=not no_ema, dtype=dtypes[dtype])
    typer.echo(str(Path(d).resolve()))


@data_app.command("cache")
def cache_cmd(
    data: Path = typer.Argument(..., help="Dataset directory."),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Model dir (pipeline dir with vae/, or a VAE dir): cache its latents."
    ),
    pixels: bool = typer.Option(
        False, "--pixels", help="Cache the decoded clips themselves (pixel-space models, fast GPU training)."
    ),
    workers: int = typer.Option(0, min=0, help="Decoding processes (0: decode in this process)."),
    device: str = typer.Option(
        "auto", help="Where the VAE encodes: auto (cuda if available), cpu, cuda, ..."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Cache directory to write."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Training YAML whose `data:` section to use."
    ),
    preset: str | None = typer.Option(
        None, "--preset", "-p", help="Training preset whose `data:` section to use."
    ),
    batch_size: int = typer.Option(8, help="Clips per VAE call."),
    clips_per_video: int = typer.Option(1, help="Clips cached per video (evenly spaced starts)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Precompute VAE latents (and frozen text embeddings), or with --pixels the decoded clips, so that
    training neither decodes videos nor runs the VAE (train with `--set cache=OUT`)."""
    from tubelet.data.cache import build_cache, build_pixel_cache
    from tubelet.data.dataset import DataConfig
    from tubelet.errors import TubeletError

    if (model is None) == (not pixels):
        raise TubeletError("give exactly one of --model DIR (a latent cache) or --pixels (a pixel cache)")

    data_cfg = DataConfig()
    if config is not None or preset is not None:
        from tubelet.train.config import resolve_train_config

        data_cfg = resolve_train_config(preset, config).data
    if pixels:
        path = build_pixel_cache(
            data, out, data=data_cfg, clips_per_video=clips_per_video, workers=workers, progress=progress
        )
    else:
        from tubelet.devices import resolve_device

        assert model is not None  # checked above: a latent cache needs --model
        path = build_cache(
            data, model, out, data=data_cfg, batch_size=batch_size, clips_per_video=clips_per_video,
            device=resolve_device(device), workers=workers, progress=progress,
        )  # fmt: skip
    typer.echo(str(path.resolve()))
