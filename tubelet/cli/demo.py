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
    """Generate one video with the embedded default model and print its path.

    If the package has no default model (a source checkout before it was trained), this renders
    the prompt in the synthetic shapes world (the data the default model learns from) instead.
    """
    from tubelet.pipeline import default_model_dir

    if (default_model_dir() / "config.json").is_file():
        from tubelet.pipeline import TextToVideoPipeline

        pipe = TextToVideoPipeline.from_pretrained()
        result = pipe(prompt, seed=seed)
        path = result.save(out)
        typer.echo(f"prompt: {prompt}", err=True)
    else:
        import numpy as np

        from tubelet.data.shapes import caption, parse_caption, render, scene_for_spec
        from tubelet.io import write_video

        spec = parse_caption(prompt)
        scene = scene_for_spec(spec, np.random.default_rng(seed))
        frames = render(scene)
        meta = {
            "source": "tubelet shapes world (no default model in this install)",
            "seed": seed,
            "prompt": prompt,
        }
        path = write_video(out, frames, 8.0, metadata=meta)
        typer.echo(
            f"no embedded default model: rendered the shapes world for {caption(spec, 'en')!r}", err=True
        )
    typer.echo(str(Path(path).resolve()))
