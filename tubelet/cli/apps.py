"""The Typer apps that command modules attach to (kept apart to avoid import cycles).

Command modules import heavy libraries (torch, av, cv2) inside the command functions so
that `tubelet --help` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="tubelet",
    help="tubelet: train, generate and evaluate Sora-style text-to-video models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", help="Print full tracebacks instead of one-line errors (or set TUBELET_DEBUG=1)."
    ),
) -> None:
    """tubelet: train, generate and evaluate Sora-style text-to-video models."""
    # `tubelet.cli.main` reads --debug itself (errors can come before this runs); nothing to do here.


data_app = typer.Typer(help="Datasets: the synthetic shapes world, checks and caches.", no_args_is_help=True)
eval_app = typer.Typer(
    help="Evaluation: the shapes-world oracle, box control and VBench-style dimensions.", no_args_is_help=True
)
convert_app = typer.Typer(
    help="Convert external checkpoints (Wan2.1) to tubelet model directories.", no_args_is_help=True
)

lora_app = typer.Typer(
    help="LoRA files: merge into a model, convert between formats (diffusers, ComfyUI), inspect.",
    no_args_is_help=True,
)

app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.add_typer(convert_app, name="convert")
app.add_typer(lora_app, name="lora")
