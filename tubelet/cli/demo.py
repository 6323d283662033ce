"""CLI commands (to be written)."""

from tubelet.cli.apps import app, convert_app, data_app, eval_app  # noqa: F401
