"""`tubelet serve`: an HTTP job API with a persistent queue, a progress stream and a web page.

    from tubelet.serve import ServeConfig, create_app
    app = create_app(ServeConfig(model="models/my-model", data_dir="serve-data"))   # a FastAPI app

Rooms: `store` (the SQLite queue both processes share), `worker` (the process that loads the model
once and runs jobs), `uploads` (files checked by decoding), `app` (routes, auth, the page). The API is
thin over `GenerationRequest`: a job's result is what `tubelet generate` makes with the same settings.
FastAPI and uvicorn are the extra `tubelet[serve]`.
"""

from __future__ import annotations

from tubelet.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
