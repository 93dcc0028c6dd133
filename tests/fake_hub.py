"""A Hugging Face hub on 127.0.0.1 serving model folders, for download tests without network.

Serves just what huggingface_hub's client asks for: repo info, the file tree, and file
resolution (HEAD then GET). Every request is logged so tests can see what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path]):
        self.repos = repos  # repo id -> folder with its files
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub._answer(self, head=False)

            def do_HEAD(self) -> None:
                hub._answer(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def fetched(self) -> set[str]:
        """File names whose content was downloaded (GET on resolve)."""
        return {
            path.split("/resolve/")[1].split("/", 1)[1]
            for verb, path in self.requests
            if verb == "GET" and "/resolve/" in path
        }

    def _answer(self, request: BaseHTTPRequestHandler, head: bool) -> None:
        self.requests.append((request.command, request.path))
        path = request.path.split("?")[0]
        repo = next((r for r in self.repos if f"/{r}/" in path + "/"), None)
        if repo is None:
            return self._send(
                request, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head
            )
        files = self.files(repo)
        if path.startswith("/api/models/") and "/tree/" in path:
            tree = [
                {"type": "file", "path": n, "size": p.stat().st_size, "oid": _digest(p)[:40]} for n, p in files.items()
            ]
            return self._send(request, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
        if path.startswith("/api/models/"):
            info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]}
            return self._send(request, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
        if "/resolve/" in path:
            name = path.split("/resolve/")[1].split("/", 1)[1]
            if name not in files:
                return self._send(request, 404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            data = files[name].read_bytes()
            return self._send(request, 200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{_digest(files[name])}"'}, head)
        return self._send(request, 404, b"", {}, head)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, code: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        request.send_response(code)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if not head:
            request.wfile.write(body)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fill_cache(cache: Path, repo: str, folder: Path, skip: tuple[str, ...] = ()) -> Path:
    """Lay a model folder out as huggingface_hub's cache does (refs/main -> snapshots/<commit>)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    for source in folder.rglob("*"):
        relative = source.relative_to(folder)
        if source.is_file() and relative.as_posix() not in skip:
            (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / relative).write_bytes(source.read_bytes())
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot
