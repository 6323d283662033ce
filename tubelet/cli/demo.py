"""`tubelet demo`: one video, offline, in seconds (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from tubelet.cli.apps import app

DEMO_PROMPT = "a big red circle moving right and a small blue square moving up, on a white background"


@app.command("demo")
def demo(
    out: Path = typer.Option(
        Path("outputs/demo.mp4"), "--out", "-o", help="Where to write the video (.mp4 or .gif)."
    ),
    prompt: str = typer.Option(DEMO_PROMPT, help="What to generate (English or Chinese)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Generate one video with the embedded default model and print its path."""
    from tubelet.pipelines import TextToVideoPipeline, VideoResult

    pipe = TextToVideoPipeline.from_pretrained()
    result = pipe(prompt, seed=seed)
    assert isinstance(result, VideoResult)  # one prompt string gives one result
    path = result.save(out)
    typer.echo(f"prompt: {prompt}", err=True)
    typer.echo(str(Path(path).resolve()))
