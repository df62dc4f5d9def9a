"""``/docs`` without the internet: Swagger UI served from the ``swagger-ui-bundle``
package's files instead of FastAPI's default CDN links (a self-hosted or air-gapped
deployment has no route to a CDN, and a page that loads scripts from one leaks who reads
the docs). ``/redoc`` is not served: its script exists only on a CDN.

The page and its assets are operator routes: ``VECTORDB_DOCS_ACCESS`` opens, keys or
closes them with ``/openapi.json`` (:mod:`api.access`).
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from vectordb.errors import NotFound

DOCS_PATH = "/docs"
ASSETS_PATH = DOCS_PATH + "/assets/{name}"
# The files the page loads: nothing else of the bundle is served.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


@functools.cache
def _bundle_dir() -> Path:
    import swagger_ui_bundle  # on the first asset asked for, not at a worker's start

    return Path(swagger_ui_bundle.swagger_ui_path)


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` from local files. ``app`` must be made with ``docs_url=None`` and
    ``redoc_url=None``; ``app.docs_url`` is set afterwards so access control knows it."""
    base = DOCS_PATH + "/assets/"

    @app.get(DOCS_PATH, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} API",
            swagger_js_url=base + "swagger-ui-bundle.js",
            swagger_css_url=base + "swagger-ui.css",
            swagger_favicon_url=base + "favicon-32x32.png",
        )

    @app.get(ASSETS_PATH, include_in_schema=False)
    def asset(name: str) -> FileResponse:
        media = ASSETS.get(name)
        if media is None:
            raise NotFound(f"no docs asset {name!r}")
        return FileResponse(_bundle_dir() / name, media_type=media, headers={"cache-control": "public, max-age=86400"})

    app.docs_url = DOCS_PATH
