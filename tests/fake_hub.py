"""An in-process fake of the Hugging Face hub's HTTP API, for tests that download with the real huggingface_hub client.

`FakeHub` serves model repos on 127.0.0.1 and records every request; `hub_at` points huggingface_hub at it.
Together they let the real `HfApi().model_info`, `HfApi().list_repo_tree`, `snapshot_download` and
`hf_hub_download` fill a normal Hugging Face cache folder, without a network:

    repo = FakeRepo.of({"model_index.json": b"{}", "unet/diffusion_pytorch_model.safetensors": b"..."})
    with FakeHub({"owner/name": repo}) as hub, hub_at(hub.endpoint):
        folder = snapshot_download("owner/name", allow_patterns=["model_index.json"], cache_dir=tmp_path)
    assert hub.downloaded() == ["owner/name:model_index.json"]

Served (huggingface_hub 2.4.0 needs no more to download):

- `GET /api/models/{owner}/{name}[/revision/{revision}][?blobs=true]`: the repo's id, commit `sha` and `siblings`
  (with `size`, `blobId` and `lfs` when `blobs` is true).
- `GET /api/models/{owner}/{name}/tree/{revision}[/{path}][?recursive=true]`: files and directories, in one page.
  `expand` is ignored: no last-commit or security information is served.
- `HEAD` and `GET /{owner}/{name}/resolve/{revision}/{path}`: the file's metadata headers and, for `GET`, its bytes
  (a `Range` of the form `bytes=START-[END]` gets a 206).

Revisions are branch names or `refs/pr/N` (a repo's `refs`) or full commit shas. Files named like weights
(`*.safetensors`, `*.bin`, ...) or of 1 MiB and more are served as LFS files, as the hub does: their ETag is their
sha256, other files' ETag is their git blob sha1, so the cache's blob names match the real hub's.
No Xet headers are sent, so the client downloads over plain HTTP whether or not `hf_xet` is installed.
Errors carry the `X-Error-Code` header the client maps to its exceptions: `RepoNotFound`, `RevisionNotFound`,
`EntryNotFound`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit

from huggingface_hub import constants, hf_api

_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".msgpack", ".h5")
_LFS_MIN_SIZE = 1024 * 1024
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class FakeRepo:
    """One model repo: its commits (sha -> {path in repo: file bytes}) and its refs (branch or 'refs/pr/N' -> sha).

    Commit shas must be 40 lowercase hex digits: the client treats any other revision as a branch name.
    """

    commits: dict[str, dict[str, bytes]]
    refs: dict[str, str]

    def __post_init__(self) -> None:
        for sha in self.commits:
            if not _COMMIT_SHA.fullmatch(sha):
                raise ValueError(f"Commit sha {sha!r} is not 40 lowercase hex digits")
        for ref, sha in self.refs.items():
            if sha not in self.commits:
                raise ValueError(f"Ref {ref!r} points to unknown commit {sha!r}")

    @classmethod
    def of(cls, files: dict[str, bytes]) -> FakeRepo:
        """A repo with one commit holding `files`, on branch `main`; the commit sha is derived from the files."""
        digest = hashlib.sha1()
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + _git_blob_sha1(files[path]).encode())
        sha = digest.hexdigest()
        return cls(commits={sha: dict(files)}, refs={"main": sha})

    def resolve(self, revision: str) -> str | None:
        """The commit sha a revision (ref or full sha) names, or None if the repo has no such revision."""
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


@dataclass(frozen=True)
class _Blob:
    """What the hub tells about one file: its git blob id, size and, for an LFS file, its sha256 and pointer size."""

    content: bytes
    blob_id: str
    sha256: str | None
    pointer_size: int | None

    @classmethod
    def of(cls, path: str, content: bytes) -> _Blob:
        if not (path.endswith(_LFS_SUFFIXES) or len(content) >= _LFS_MIN_SIZE):
            return cls(content, _git_blob_sha1(content), None, None)
        sha256 = hashlib.sha256(content).hexdigest()
        # The hub's blob id of an LFS file is that of the pointer file git stores in its place.
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(content)}\n".encode()
        return cls(content, _git_blob_sha1(pointer), sha256, len(pointer))

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id


class _HubError(Exception):
    """An error answer: a status and the `X-Error-Code` the client maps to an exception (None for a plain 404)."""

    def __init__(self, status: HTTPStatus, code: str | None, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.commit = commit


class FakeHub:
    """Serves repos over HTTP on 127.0.0.1 (a free port) in a background thread; records every request.

    Use it as a context manager: entering starts the server, leaving stops it and joins all of its threads.
    """

    def __init__(self, repos: dict[str, FakeRepo]) -> None:
        """Serve `repos` (repo id "owner/name" -> repo), as they are now: later changes to them are not seen."""
        self._repos = {
            repo_id: replace(repo, commits=dict(repo.commits), refs=dict(repo.refs)) for repo_id, repo in repos.items()
        }
        # Hashed once: a run asks for the same commit many times.
        self._blobs = {
            (repo_id, sha): {path: _Blob.of(path, content) for path, content in sorted(files.items())}
            for repo_id, repo in repos.items()
            for sha, files in repo.commits.items()
        }
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str]] = []
        self._downloaded: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """The hub's base URL, e.g. "http://127.0.0.1:PORT" (only while the hub runs)."""
        if self._server is None:
            raise RuntimeError("FakeHub is not running: use it in a `with` block")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request so far, in arrival order, as (method, path as sent, without the query)."""
        with self._lock:
            return list(self._requests)

    def downloaded(self) -> list[str]:
        """Repo files whose content a GET .../resolve/... served, in order, as "owner/name:path"."""
        with self._lock:
            return list(self._downloaded)

    def __enter__(self) -> FakeHub:
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeHub", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = None
        self._thread = None

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self._requests.append((method, path))

    def _record_download(self, repo_id: str, path: str) -> None:
        with self._lock:
            self._downloaded.append(f"{repo_id}:{path}")

    def _commit(self, repo_id: str, revision: str) -> tuple[str, dict[str, _Blob]]:
        """The commit sha and files a revision of a repo names; raises _HubError as the hub answers."""
        repo = self._repos.get(repo_id)
        if repo is None:
            raise _HubError(HTTPStatus.NOT_FOUND, "RepoNotFound", f"Repository {repo_id} not found")
        sha = repo.resolve(revision)
        if sha is None:
            raise _HubError(HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha, self._blobs[repo_id, sha]


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close, so that leaving FakeHub leaves no thread behind.
    daemon_threads = False

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client hangs up mid-answer (e.g. a cancelled download); report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Bounds how long a handler thread waits on a silent client, hence how long stopping the hub can take.
    timeout = 5

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log lines http.server writes to stderr."""

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        hub._record(self.command, url.path)
        # The client sends booleans as httpx writes them: "true" / "false".
        query = {key: values[-1].lower() for key, values in parse_qs(url.query).items()}
        parts = [unquote(part) for part in url.path.split("/")[1:]]
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                if not send_body:
                    raise _HubError(HTTPStatus.METHOD_NOT_ALLOWED, None, "Only GET is served on /api")
                self._api(hub, "/".join(parts[2:4]), parts[4:], query)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(hub, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), send_body)
            else:
                raise _HubError(HTTPStatus.NOT_FOUND, None, f"FakeHub does not serve {url.path}")
        except _HubError as error:
            self._send_error(error, send_body)

    def _api(self, hub: FakeHub, repo_id: str, rest: list[str], query: dict[str, str]) -> None:
        if not rest or (rest[0] == "revision" and len(rest) == 2):
            revision = rest[1] if rest else constants.DEFAULT_REVISION
            sha, blobs = hub._commit(repo_id, revision)
            self._send_json(
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": sha,
                    "private": False,
                    "siblings": [
                        _sibling(path, blob, with_blobs=query.get("blobs") == "true") for path, blob in blobs.items()
                    ],
                }
            )
        elif rest[0] == "tree" and len(rest) >= 2:
            sha, blobs = hub._commit(repo_id, rest[1])
            folder = "/".join(rest[2:])
            entries = _tree(sha, blobs, folder, query.get("recursive") == "true")
            if entries is None:
                raise _HubError(HTTPStatus.NOT_FOUND, "EntryNotFound", f"{folder} does not exist", sha)
            self._send_json(entries)
        else:
            raise _HubError(HTTPStatus.NOT_FOUND, None, f"FakeHub does not serve /api/models/{repo_id}/{rest[0]}")

    def _resolve(self, hub: FakeHub, repo_id: str, revision: str, path: str, send_body: bool) -> None:
        sha, blobs = hub._commit(repo_id, revision)
        blob = blobs.get(path)
        if blob is None:
            raise _HubError(HTTPStatus.NOT_FOUND, "EntryNotFound", f"{path} does not exist", sha)
        start, end = 0, len(blob.content)
        status = HTTPStatus.OK
        requested = self.headers.get("Range")
        if requested is not None:
            match = _RANGE.fullmatch(requested.strip())
            if match is None or int(match[1]) >= len(blob.content):
                raise _HubError(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, None, f"Bad range {requested}", sha)
            start, end = int(match[1]), min(int(match[2]) + 1 if match[2] else end, end)
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", f'"{blob.etag}"')
        if blob.sha256 is not None:
            self.send_header("X-Linked-Etag", f'"{blob.sha256}"')
            self.send_header("X-Linked-Size", str(len(blob.content)))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(blob.content)}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if send_body:
            hub._record_download(repo_id, path)
            self.wfile.write(blob.content[start:end])

    def _send_json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, error: _HubError, send_body: bool) -> None:
        body = json.dumps({"error": str(error)}).encode()
        self.send_response(error.status)
        if error.code is not None:
            self.send_header("X-Error-Code", error.code)
        self.send_header("X-Error-Message", str(error))
        if error.commit is not None:
            # The client caches "this file does not exist at this commit" from it.
            self.send_header("X-Repo-Commit", error.commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _sibling(path: str, blob: _Blob, with_blobs: bool) -> dict[str, object]:
    if not with_blobs:
        return {"rfilename": path}
    sibling: dict[str, object] = {"rfilename": path, "size": len(blob.content), "blobId": blob.blob_id}
    if blob.sha256 is not None:
        sibling["lfs"] = {"size": len(blob.content), "sha256": blob.sha256, "pointerSize": blob.pointer_size}
    return sibling


def _tree(sha: str, blobs: dict[str, _Blob], folder: str, recursive: bool) -> list[dict[str, object]] | None:
    """The tree listing of `folder` ("" for the root), directories first as the hub does; None if it is no folder."""
    prefix = f"{folder}/" if folder else ""
    below = [path[len(prefix) :] for path in blobs if path.startswith(prefix)]
    if folder and not below:
        return None
    directories: set[str] = set()
    files: list[str] = []
    for relative in below:
        parents = relative.split("/")[:-1]
        if recursive:
            directories.update(prefix + "/".join(parents[:depth]) for depth in range(1, len(parents) + 1))
            files.append(prefix + relative)
        elif parents:
            directories.add(prefix + parents[0])
        else:
            files.append(prefix + relative)
    entries: list[dict[str, object]] = [
        {"type": "directory", "oid": hashlib.sha1(f"{sha}:{path}".encode()).hexdigest(), "size": 0, "path": path}
        for path in sorted(directories)
    ]
    for path in files:
        blob = blobs[path]
        entry: dict[str, object] = {"type": "file", "oid": blob.blob_id, "size": len(blob.content), "path": path}
        if blob.sha256 is not None:
            entry["lfs"] = {"oid": blob.sha256, "size": len(blob.content), "pointerSize": blob.pointer_size}
        entries.append(entry)
    return entries


@contextmanager
def hub_at(endpoint: str) -> Iterator[None]:
    """Point huggingface_hub at `endpoint` for the block, online, and restore its settings afterwards.

    The client reads these module attributes at call time, so patching them is enough, even after an import:
    - `constants.ENDPOINT` and `constants.HUGGINGFACE_CO_URL_TEMPLATE`: where `HfApi()` and `hf_hub_url` send requests;
    - `constants.HF_HUB_OFFLINE` off: with it on (the suite sets HF_HUB_OFFLINE=1), every request of the client's
      session raises `OfflineModeIsEnabled` (`constants.is_offline_mode()` returns it);
    - `constants.HF_HUB_DISABLE_TELEMETRY` on: otherwise the first request of a process also GETs
      `/api/agent-harnesses` from the endpoint (to name an AI agent in the user agent), which would make the requests
      a hub records depend on which test ran first;
    - `hf_api.api.endpoint`: the module-level `huggingface_hub.model_info`, `list_repo_tree`, ... are methods of an
      `HfApi` made at import, which kept the endpoint of that moment.
    Copies other libraries took at import (e.g. diffusers' `HF_HUB_OFFLINE`) are left alone.
    """
    with ExitStack() as stack:
        for target, name, value in (
            (constants, "ENDPOINT", endpoint),
            (constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
            (constants, "HF_HUB_OFFLINE", False),
            (constants, "HF_HUB_DISABLE_TELEMETRY", True),
            (hf_api.api, "endpoint", endpoint),
        ):
            stack.enter_context(mock.patch.object(target, name, value))
        yield
