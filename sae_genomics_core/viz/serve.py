"""The feature pages over http: a browser refuses file:// links from the Dagster UI (an http page), so
`sae-genomics pages` (and `sae-genomics ui`, beside the webserver) serves the artefact store's pages
folder on 127.0.0.1, and the `feature_pages` asset links there ($SAE_GENOMICS_PAGES_URL)."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


def page_url(base: str, dataset: str, layer: int) -> str:
    """Where the pages server shows one dataset × layer's explorer."""
    return f"{base.rstrip('/')}/{dataset}/L{layer}/index.html"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the webserver's own log


def pages_server(root: Path, base_url: str) -> ThreadingHTTPServer:
    """A server of `root` (the pages folder) on the host and port of `base_url`, not yet serving."""
    address = urlsplit(base_url)
    root.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(root))
    return ThreadingHTTPServer((address.hostname or "127.0.0.1", address.port or 80), handler)


def serve_in_background(root: Path, base_url: str) -> ThreadingHTTPServer:
    server = pages_server(root, base_url)
    threading.Thread(target=server.serve_forever, name="feature-pages", daemon=True).start()
    return server
