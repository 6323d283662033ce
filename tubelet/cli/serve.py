"""`tubelet serve`: the job API and the web page (docs/serve.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tubelet.cli.apps import app


@app.command("serve")
def serve(
    model: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--model", "-m", help="Pipeline directory or training run (default: the embedded model)."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (other than local: needs --token)."
    ),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    data_dir: Path = typer.Option(
        Path("tubelet-serve"),
        "--data-dir",
        help="Where the queue, uploads and results live (kept across restarts).",
    ),
    token: Optional[str] = typer.Option(  # noqa: UP045
        None,
        "--token",
        envvar="TUBELET_TOKEN",
        help="Require 'Authorization: Bearer TOKEN' on the API (or TUBELET_TOKEN).",
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Allow a non-local --host without a token (not advised)."
    ),
    max_queue: int = typer.Option(
        100, "--max-queue", help="Queued + running jobs; more are refused (HTTP 429)."
    ),
    max_upload_mb: float = typer.Option(
        64.0, "--max-upload-mb", help="Largest uploaded image or clip, in MB."
    ),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:1, ..."),
    offload: Optional[str] = typer.Option(  # noqa: UP045
        None, "--offload", help="model | blocks: keep the weights in CPU memory (docs/inference.md)."
    ),
    quantize: Optional[str] = typer.Option(  # noqa: UP045
        None, "--quantize", help="int8 | fp8: quantize the DiT's weights (docs/inference.md)."
    ),
    dtype: str = typer.Option("auto", "--dtype", help="The DiT's dtype: auto, float32, bfloat16, float16."),
    preview_every: int = typer.Option(
        4, "--preview-every", help="Steps between live previews while someone watches a job (0: none)."
    ),
) -> None:
    """Serve the model: a job API (/v1/videos, docs at /docs) and a web page at http://HOST:PORT/."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        from tubelet.errors import TubeletError

        raise TubeletError("tubelet serve needs FastAPI and uvicorn: pip install 'tubelet[serve]'") from None
    from tubelet.serve import ServeConfig, create_app

    if model is not None and not model.exists():
        from tubelet.errors import ModelLoadError

        raise ModelLoadError(f"{model}: no such model directory")
    if not 0 < port < 65536:
        from tubelet.errors import ConfigError

        raise ConfigError(f"--port must be in 1..65535, got {port}")
    cfg = ServeConfig(
        model=str(model) if model is not None else None,
        data_dir=data_dir,
        host=host,
        port=port,
        token=token,
        insecure=insecure,
        max_queue=max_queue,
        max_upload_mb=max_upload_mb,
        device=device,
        preview_every=preview_every,
        runtime={
            k: v for k, v in (("offload", offload), ("quantize", quantize), ("dtype", dtype)) if v is not None
        },
    )
    cfg.check()
    from tubelet.serve.app import check_data_dir

    check_data_dir(Path(data_dir).resolve())
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        typer.echo(
            f"WARNING: serving on {host} WITHOUT A TOKEN (--insecure): anyone who can reach this machine "
            "can queue jobs and read every result",
            err=True,
        )
    application = create_app(cfg)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"tubelet serve: http://{shown}:{port}/  (API docs: /docs, data: {Path(data_dir).resolve()})",
        err=True,
    )
    uvicorn.run(application, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
