"""`tubelet data shapes`: write a synthetic shapes-world dataset (videos + bilingual captions)."""

from __future__ import annotations

from pathlib import Path

import typer

from tubelet.cli.apps import data_app


def _parse_size(text: str) -> int | tuple[int, int]:
    """ "64" -> 64; "96x64" (WIDTHxHEIGHT) -> (64, 96) as (height, width)."""
    from tubelet.errors import DataError

    t = text.strip().lower()
    try:
        if "x" in t:
            w, h = (int(v) for v in t.split("x"))
            return (h, w)
        return int(t)
    except ValueError:
        raise DataError(f"bad --size {text!r}: expected pixels (64) or WIDTHxHEIGHT (96x64)") from None


@data_app.command("shapes")
def shapes(
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder (new, empty, or a previous shapes dataset)."
    ),
    num: int = typer.Option(
        ..., "--num", "-n", help="Number of clips (each gets an English and a Chinese caption)."
    ),
    seed: int = typer.Option(0, help="Dataset seed; clip i is make_clip((seed, i))."),
    frames: int = typer.Option(17, help="Frames per clip (1 + 4k suits the causal VAE)."),
    size: str = typer.Option("64", help="Frame size: pixels for a square (64) or WIDTHxHEIGHT (96x64)."),
    fps: float = typer.Option(8.0, help="Frames per second written into the videos."),
    noise: float = typer.Option(
        0.0, help="Gaussian pixel noise, standard deviation in 8-bit levels (0-255)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    workers: int = typer.Option(1, min=1, help="Processes rendering and encoding clips (same output)."),
    free_motion: float = typer.Option(
        0.0,
        "--free-motion",
        min=0.0,
        max=1.0,
        help="Fraction of clips with motion text cannot say (diagonal, curved, speeding up, stopping, "
        "crossing), for training box control; their boxes are in captions.jsonl.",
    ),
    holdout: Path | None = typer.Option(
        None,
        help="JSON list of [color, shape, motion] combinations to keep out (clips with one are skipped): "
        "a file, or a shipped list by name (shapes-holdout: the default model's).",
    ),
) -> None:
    """Write a shapes-world dataset: videos/NNNNNN.mp4, captions.jsonl (en + zh), scenes.jsonl."""
    import time

    from tubelet.recipes.shapes import suite_path, write_dataset

    frame_size = _parse_size(size)
    h, w = (frame_size, frame_size) if isinstance(frame_size, int) else frame_size
    t0 = time.perf_counter()
    import json

    held = None
    if holdout is not None:
        from tubelet.errors import DataError

        holdout = suite_path(holdout)
        try:
            held = [tuple(c) for c in json.loads(holdout.read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError) as e:
            raise DataError(f"{holdout}: cannot read the holdout list ({e})") from None
    path = write_dataset(
        out,
        num,
        seed=seed,
        frames=frames,
        size=frame_size,
        fps=fps,
        noise=noise,
        progress=progress,
        holdout=held,
        workers=workers,
        free_motion=free_motion,
    )
    dt = time.perf_counter() - t0
    skipped = json.loads((path / "shapes.json").read_text()).get("skipped_holdout", 0) if held else 0
    if skipped:
        typer.echo(f"skipped {skipped} clips with held-out combinations")
    num -= skipped
    typer.echo(
        f"wrote {num} clips ({2 * num} captions, en + zh; {frames} frames {w}x{h} @ {fps:g} fps) "
        f"to {path} in {dt:.1f}s"
    )
