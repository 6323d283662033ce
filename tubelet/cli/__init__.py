"""Thin typed CLI over the library. Every command calls a library function.

User errors (`TubeletError`) are printed as one line on stderr with exit status 1.
"""

from __future__ import annotations

import sys

from tubelet.cli import (  # noqa: F401  (importing registers the commands)
    convert,
    data_check,
    data_shapes,
    demo,
    eval_oracle,
    eval_sample,
    eval_videos,
    generate,
    train,
)
from tubelet.cli.apps import app
from tubelet.errors import TubeletError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, prog_name="tubelet")
    except TubeletError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
