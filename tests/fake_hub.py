"""A small in-memory Hugging Face Hub on 127.0.0.1, for push/pull tests without a network.

It speaks the endpoints ``huggingface_hub`` 2.x uses to create a repo and a branch, upload a folder (preupload +
NDJSON commit, every file "regular", so no LFS/Xet), and to resolve, list and download files. Point a process at it
with ``HF_ENDPOINT=hub.url`` set *before* importing ``huggingface_hub``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def git_oid(content: bytes) -> str:
    """Git's blob id, which the Hub reports for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    private: bool
    refs: dict[str, str] = field(default_factory=dict)                  # branch -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> {path: content}

    def commit(self, branch: str, files: dict[str, bytes]) -> str:
        sha = hashlib.sha1(f"{len(self.commits)}:{sorted(files)}".encode()).hexdigest()
        self.commits[sha] = files
        self.refs[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        revision = unquote(revision)
        return self.refs.get(revision) or (revision if revision in self.commits else None)


class FakeHub:
    """``with FakeHub() as hub:`` serves ``hub.url`` until the block ends; ``hub.repos`` holds what was pushed."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.unhandled: list[str] = []  # requests the fake did not understand, for test diagnostics
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def _body(self) -> bytes:
            """Read the whole request body (always: leftovers would corrupt the next keep-alive request)."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), headers)

        def _not_found(self, code: str) -> None:
            self._json(404, {"error": code}, {"X-Error-Code": code})

        def _route(self) -> None:
            body = self._body()
            path = urlsplit(self.path).path
            parts = [unquote(p) for p in path.strip("/").split("/")]
            with hub.lock:
                if self.command == "POST" and path == "/api/repos/create":
                    return self._create_repo(json.loads(body))
                if self.command == "POST" and path == "/api/validate-yaml":
                    return self._json(200, {})
                if path == "/api/agent-harnesses":  # huggingface_hub's user-agent telemetry
                    return self._json(200, {"standardEnvVars": [], "harnesses": {}})
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    return self._api(parts[2] + "/" + parts[3], parts[4:], body)
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]))
            hub.unhandled.append(f"{self.command} {self.path}")
            self._not_found("EndpointNotFound")

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _route

        def _create_repo(self, request: dict) -> None:
            repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            url = {"url": f"{hub.url}/{repo_id}", "name": repo_id}
            if repo_id in hub.repos:
                return self._json(409, {"error": "You already created this model repo", **url})
            hub.repos[repo_id] = Repo(private=request.get("visibility") == "private" or bool(request.get("private")))
            hub.repos[repo_id].commit("main", {".gitattributes": b""})
            self._json(200, url)

        def _api(self, repo_id: str, rest: list[str], body: bytes) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._not_found("RepoNotFound")
            action, revision = (rest[0], rest[1]) if len(rest) >= 2 else ("info", "main")
            if action == "branch" and self.command == "POST":
                if revision in repo.refs:
                    return self._json(409, {"error": "Reference already exists"})
                start = (json.loads(body or b"{}").get("startingPoint") or "main")
                repo.refs[revision] = repo.resolve(start)
                return self._json(200, {})
            sha = repo.resolve(revision)
            if sha is None:
                return self._not_found("RevisionNotFound")
            files = repo.commits[sha]
            if action == "preupload":  # the oid of an unchanged file lets the client skip it, as on the Hub
                paths = [f["path"] for f in json.loads(body)["files"]]
                return self._json(200, {"files": [{"path": p, "uploadMode": "regular", "shouldIgnore": False,
                                                   "oid": git_oid(files[p]) if p in files else None} for p in paths]})
            if action == "commit":
                return self._commit(repo_id, repo, revision, dict(files), body)
            if action in ("info", "revision"):
                return self._json(200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                                        "siblings": [{"rfilename": p} for p in sorted(files)]})
            if action == "tree":
                prefix = "/".join(rest[2:])
                entries = [{"type": "file", "path": p, "size": len(c), "oid": git_oid(c)}
                           for p, c in sorted(files.items()) if not prefix or p.startswith(prefix + "/")]
                return self._json(200, entries) if entries else self._not_found("EntryNotFound")
            hub.unhandled.append(f"{self.command} {self.path}")
            self._not_found("EndpointNotFound")

        def _commit(self, repo_id: str, repo: Repo, branch: str, files: dict[str, bytes], body: bytes) -> None:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    gone = item["value"]["path"].rstrip("/")
                    files = {p: c for p, c in files.items() if p != gone and not p.startswith(gone + "/")}
                elif item["key"] != "header":
                    raise ValueError(f"fake hub cannot apply commit operation {item['key']!r}")
            sha = repo.commit(branch, files)
            self._json(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                             "pullRequestUrl": None})

        def _resolve(self, repo_id: str, revision: str, path: str) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._not_found("RepoNotFound")
            sha = repo.resolve(revision)
            if sha is None:
                return self._not_found("RevisionNotFound")
            content = repo.commits[sha].get(path)
            if content is None:
                return self._json(404, {"error": "EntryNotFound"}, {"X-Error-Code": "EntryNotFound",
                                                                    "X-Repo-Commit": sha})
            self._send(200, content, {"X-Repo-Commit": sha, "ETag": f'"{git_oid(content)}"'},
                       content_type="application/octet-stream")

    return Handler
