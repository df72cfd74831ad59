"""A local stand-in for the Hugging Face hub: the HTTP endpoints huggingface_hub uses to download a repo.

Serves a folder as a model repo at one commit: `GET /api/models/{repo}/revision/{rev}` (repo info with
its file list), `GET /api/models/{repo}/tree/{rev}` (the file tree) and `HEAD`/`GET /{repo}/resolve/{rev}/{path}` (file metadata headers and content), on
127.0.0.1 only. Counts requests so tests can check that a second load is served from the cache.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repo_id: str, folder: Path, commit: str = "0123456789abcdef0123456789abcdef01234567"):
        self.repo_id, self.folder, self.commit = repo_id, folder, commit
        self.requests: Counter[str] = Counter()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _files(self) -> list[str]:
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _route(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests[f"{self.command} {path}"] += 1
                info_prefix = f"/api/models/{hub.repo_id}/revision/"
                tree_prefix = f"/api/models/{hub.repo_id}/tree/"
                if path.startswith(tree_prefix):
                    entries = []
                    for name in hub._files():
                        data = (hub.folder / name).read_bytes()
                        entries.append(
                            {
                                "type": "file",
                                "path": name,
                                "size": len(data),
                                "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                            }
                        )
                    self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head)
                    return
                resolve_prefix = f"/{hub.repo_id}/resolve/"
                if path.startswith(info_prefix):
                    body = json.dumps(
                        {
                            "id": hub.repo_id,
                            "modelId": hub.repo_id,
                            "sha": hub.commit,
                            "private": False,
                            "siblings": [{"rfilename": name} for name in hub._files()],
                        }
                    ).encode()
                    self._send(200, body, {"Content-Type": "application/json"}, head)
                    return
                if path.startswith(resolve_prefix):
                    _, filename = path[len(resolve_prefix) :].split("/", 1)
                    target = hub.folder / filename
                    if target.is_file():
                        body = target.read_bytes()
                        etag = hashlib.sha256(body).hexdigest()
                        headers = {
                            "X-Repo-Commit": hub.commit,
                            "ETag": f'"{etag}"',
                            "Content-Type": "application/octet-stream",
                        }
                        self._send(200, body, headers, head)
                        return
                    self._send(
                        404,
                        b"Entry not found",
                        {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": hub.commit},
                        head,
                    )
                    return
                self._send(404, b"Repository not found", {"X-Error-Code": "RepoNotFound"}, head)

            def do_GET(self) -> None:
                self._route(head=False)

            def do_HEAD(self) -> None:
                self._route(head=True)

        return Handler
