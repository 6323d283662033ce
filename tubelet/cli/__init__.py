"""Thin typed CLI over the library. Every command calls a library function.

Errors a user can cause end as one line on stderr and a non-zero exit, never a traceback:

    TubeletError (bad input, named)        error: <message>                                 exit 1
    OSError on a file                      error: <file>: <reason>                          exit 1
    MemoryError / out of device memory     error: out of memory ... (what to lower)         exit 1
    KeyboardInterrupt (Ctrl-C)             interrupted                                      exit 130
    anything else (a bug in tubelet)       error: internal error ... (how to report it)     exit 1

`tubelet --debug ...` or TUBELET_DEBUG=1 prints the full traceback instead.
"""

from __future__ import annotations

import os
import sys

from tubelet.cli import (  # noqa: F401  (importing registers the commands)
    convert,
    data_check,
    data_prepare,
    data_shapes,
    demo,
    eval_boxes,
    eval_oracle,
    eval_sample,
    eval_videos,
    generate,
    lora,
    serve,
    train,
)
from tubelet.cli.apps import app
from tubelet.errors import TubeletError

__all__ = ["app", "describe_error", "main"]


def _one_line(text: str, limit: int = 600) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe_error(e: BaseException) -> tuple[str, int]:
    """(the one-line message, the exit status) the CLI prints for an exception."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(e, TubeletError):
        return f"error: {_one_line(str(e))}", 1
    oom = type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError)
    if oom:
        return (
            "error: out of memory; lower --frames, --height/--width or the batch size (or use a bigger "
            "machine)",
            1,
        )
    if isinstance(e, OSError):
        where = e.filename if e.filename is not None else ""
        reason = e.strerror or str(e)
        return f"error: {where + ': ' if where else ''}{_one_line(reason)}", 1
    if isinstance(e, RecursionError):
        return "error: input nested too deep to process (rerun with --debug for details)", 1
    return (
        f"error: internal error ({type(e).__name__}: {_one_line(str(e), 300)}); this is a bug in tubelet: "
        "rerun with --debug (or TUBELET_DEBUG=1) and report the traceback",
        1,
    )


def debug_enabled(argv: list[str]) -> bool:
    """--debug (before the command) or TUBELET_DEBUG=1/true/yes."""
    if os.environ.get("TUBELET_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return "--debug" in argv[: _command_index(argv)]


def _command_index(argv: list[str]) -> int:
    for i, a in enumerate(argv):
        if not a.startswith("-"):
            return i
    return len(argv)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (see the module doc for how errors end)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(args)
    if debug:
        os.environ["TUBELET_DEBUG"] = "1"  # for child processes (data workers, torchrun ranks)
    try:
        app(args=args, prog_name="tubelet", standalone_mode=True)
    except SystemExit as e:
        if e.code == 130:  # Typer turns Ctrl-C into a silent exit 130
            print("interrupted", file=sys.stderr)
        raise
    except BaseException as e:
        if debug and not isinstance(e, KeyboardInterrupt):
            raise
        message, code = describe_error(e)
        print(message, file=sys.stderr)
        sys.exit(code)
