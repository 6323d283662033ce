"""`tubelet demo`: one video, offline, in seconds (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from tubelet.cli.apps import app


@app.command("demo")
def demo(
    out: Path = typer.Option(
        Path("outputs/demo.mp4"), "--out", "-o", help="Where to write the video (.mp4 or .gif)."
    ),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write one demo video and print its path.

    Until the embedded default model ships, this renders a clip of the synthetic shapes
    world (the data the default model is trained on) with its caption in the metadata.
    """
    from tubelet.data.shapes import make_clip
    from tubelet.io import write_video

    clip = make_clip(seed)
    meta = {"source": "tubelet shapes world", "seed": seed, "prompt": clip.captions["en"], **clip.captions}
    path = write_video(out, clip.frames, 8.0, metadata=meta)
    typer.echo(f"caption: {clip.captions['en']}")
    typer.echo(f"          {clip.captions['zh']}")
    typer.echo(str(Path(path).resolve()))
