"""A small in-memory Hugging Face Hub on 127.0.0.1, for push/pull tests without a network.

It speaks the endpoints ``huggingface_hub`` 2.x uses to create a repo and a branch, upload a folder (preupload +
NDJSON commit, every file "regular", so no LFS/Xet), and to resolve, list and download files, for model and
dataset repos (``datasets.load_dataset`` reads a dataset repo through the same info, tree, paths-info and resolve
endpoints). Point a process at it with ``HF_ENDPOINT=hub.url`` set *before* importing ``huggingface_hub``.

Routes (``{type}`` is ``models``, ``datasets`` or ``spaces``; a model repo has no prefix in a resolve URL):

- ``POST /api/repos/create`` (the body's ``type`` picks the kind), ``POST /api/validate-yaml``
- ``GET /api/{type}/{repo}`` and ``/api/{type}/{repo}/revision/{rev}``: repo info with ``siblings``
- ``POST /api/{type}/{repo}/branch/{name}``, ``/preupload/{rev}``, ``/commit/{rev}``
- ``GET /api/{type}/{repo}/tree/{rev}[/{path}]?recursive=&expand=``: files and folders, as the Hub lists them
- ``POST /api/{type}/{repo}/paths-info/{rev}`` (form or JSON ``paths``): the entries that exist
- ``GET|HEAD /{repo}/resolve/{rev}/{path}``, ``/datasets/{repo}/resolve/...``, ``/spaces/{repo}/resolve/...``,
  with single-range ``Range`` requests answered 206

Anything else is answered 404 ``EndpointNotFound`` and recorded in ``hub.unhandled``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
COMMIT_DATE = "2025-01-01T00:00:00.000Z"  # every fake commit's date (only shown in expanded listings)


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
    """``with FakeHub() as hub:`` serves ``hub.url`` until the block ends.

    ``hub.repos`` holds the model repos (what was pushed), ``hub.datasets`` the dataset repos and ``hub.spaces`` the
    Space repos, each keyed by repo id; ``hub.requests`` logs every request as ``"METHOD /path?query"``.
    """

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.datasets: dict[str, Repo] = {}
        self.spaces: dict[str, Repo] = {}
        self.unhandled: list[str] = []  # requests the fake did not understand, for test diagnostics
        self.requests: list[str] = []   # every request, in arrival order
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repos_of(self, repo_type: str = "model") -> dict[str, Repo]:
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}, got {repo_type!r}")
        return {"model": self.repos, "dataset": self.datasets, "space": self.spaces}[repo_type]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        repo = self.repos_of(repo_type)[repo_id]
        return repo.commits[repo.resolve(revision)]

    def add_repo(self, repo_id: str, files: dict[str, bytes | str], repo_type: str = "model",
                 private: bool = False, branch: str = "main") -> str:
        """Create (or commit to) a repo holding exactly `files` plus a .gitattributes; returns the commit sha."""
        with self.lock:
            repos = self.repos_of(repo_type)
            repo = repos.setdefault(repo_id, Repo(private=private))
            content = {".gitattributes": b"", **{p: c.encode() if isinstance(c, str) else c for p, c in files.items()}}
            return repo.commit(branch, content)

    def add_dataset(self, repo_id: str, files: dict[str, bytes | str], **kwargs: object) -> str:
        return self.add_repo(repo_id, files, repo_type="dataset", **kwargs)


def _folders(files: dict[str, bytes]) -> set[str]:
    return {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}


def _folder_oid(files: dict[str, bytes], folder: str) -> str:
    inside = sorted((p, git_oid(c)) for p, c in files.items() if p.startswith(folder + "/"))
    return hashlib.sha1(json.dumps(inside).encode()).hexdigest()


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

        def _not_found(self, code: str, headers: dict[str, str] | None = None) -> None:
            self._json(404, {"error": code}, {"X-Error-Code": code, **(headers or {})})

        def _unhandled(self) -> None:
            hub.unhandled.append(f"{self.command} {self.path}")
            self._not_found("EndpointNotFound")

        def _route(self) -> None:
            body = self._body()
            split = urlsplit(self.path)
            path, self.query = split.path, parse_qs(split.query)
            parts = [unquote(p) for p in path.strip("/").split("/")]
            with hub.lock:
                hub.requests.append(f"{self.command} {self.path}")
                if self.command == "POST" and path == "/api/repos/create":
                    return self._create_repo(json.loads(body))
                if self.command == "POST" and path == "/api/validate-yaml":
                    return self._json(200, {})
                if path == "/api/agent-harnesses":  # huggingface_hub's user-agent telemetry
                    return self._json(200, {"standardEnvVars": [], "harnesses": {}})
                if parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets", "spaces"):
                    return self._api(parts[1][:-1], parts[2] + "/" + parts[3], parts[4:], body)
                if parts[0] in ("datasets", "spaces") and len(parts) >= 6 and parts[3] == "resolve":
                    return self._resolve(parts[0][:-1], parts[1] + "/" + parts[2], parts[4], "/".join(parts[5:]))
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._resolve("model", parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]))
            self._unhandled()

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _route

        def _flag(self, name: str) -> bool:
            return (self.query.get(name) or ["false"])[-1].lower() in ("1", "true")

        def _create_repo(self, request: dict) -> None:
            repo_type = request.get("type") or "model"
            repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            url = {"url": f"{hub.url}/{prefix}{repo_id}", "name": repo_id}
            repos = hub.repos_of(repo_type)
            if repo_id in repos:
                return self._json(409, {"error": f"You already created this {repo_type} repo", **url})
            repos[repo_id] = Repo(private=request.get("visibility") == "private" or bool(request.get("private")))
            repos[repo_id].commit("main", {".gitattributes": b""})
            self._json(200, url)

        def _api(self, repo_type: str, repo_id: str, rest: list[str], body: bytes) -> None:
            repo = hub.repos_of(repo_type).get(repo_id)
            if repo is None:
                return self._not_found("RepoNotFound")
            action, revision = (rest[0], rest[1]) if len(rest) >= 2 else ("info", "main")
            if len(rest) == 1:
                return self._unhandled()
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
                return self._commit(repo_type, repo_id, repo, revision, dict(files), body)
            if action in ("info", "revision") and self.command in ("GET", "HEAD"):
                info = {"id": repo_id, "sha": sha, "private": repo.private, "gated": False, "disabled": False,
                        "author": repo_id.split("/")[0], "lastModified": COMMIT_DATE, "tags": [],
                        "siblings": [{"rfilename": p} for p in sorted(files)]}
                if repo_type == "model":
                    info["modelId"] = repo_id
                return self._json(200, info)
            if action == "tree" and self.command == "GET":
                return self._tree(sha, files, "/".join(rest[2:]).strip("/"))
            if action == "paths-info" and self.command == "POST":
                return self._paths_info(sha, files, body)
            self._unhandled()

        def _entry(self, sha: str, files: dict[str, bytes], path: str, expand: bool) -> dict:
            if path in files:
                entry = {"type": "file", "path": path, "size": len(files[path]), "oid": git_oid(files[path])}
            else:
                entry = {"type": "directory", "path": path, "size": 0, "oid": _folder_oid(files, path)}
            if expand:
                entry["lastCommit"] = {"id": sha, "title": "fake commit", "date": COMMIT_DATE}
            return entry

        def _tree(self, sha: str, files: dict[str, bytes], folder: str) -> None:
            """The Hub's listing: direct children (or, with recursive, every file and folder below), sorted."""
            if folder and folder not in _folders(files):
                return self._not_found("EntryNotFound")
            below = [p for p in sorted(set(files) | _folders(files)) if not folder or p.startswith(folder + "/")]
            depth = folder.count("/") + 1 if folder else 0
            if not self._flag("recursive"):
                below = [p for p in below if p.count("/") == depth]
            self._json(200, [self._entry(sha, files, p, self._flag("expand")) for p in below])

        def _paths_info(self, sha: str, files: dict[str, bytes], body: bytes) -> None:
            if self.headers.get("Content-Type", "").startswith("application/json"):
                request = json.loads(body or b"{}")
                paths, expand = request.get("paths") or [], bool(request.get("expand"))
            else:
                form = parse_qs(body.decode())
                paths, expand = form.get("paths") or [], (form.get("expand") or ["false"])[-1].lower() == "true"
            known = set(files) | _folders(files)
            self._json(200, [self._entry(sha, files, p.strip("/"), expand) for p in paths if p.strip("/") in known])

        def _commit(self, repo_type: str, repo_id: str, repo: Repo, branch: str, files: dict[str, bytes],
                    body: bytes) -> None:
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
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            self._json(200, {"commitUrl": f"{hub.url}/{prefix}{repo_id}/commit/{sha}", "commitOid": sha,
                             "pullRequestUrl": None})

        def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
            repo = hub.repos_of(repo_type).get(repo_id)
            if repo is None:
                return self._not_found("RepoNotFound")
            sha = repo.resolve(revision)
            if sha is None:
                return self._not_found("RevisionNotFound")
            content = repo.commits[sha].get(path)
            if content is None:
                return self._not_found("EntryNotFound", {"X-Repo-Commit": sha})
            headers = {"X-Repo-Commit": sha, "ETag": f'"{git_oid(content)}"', "Accept-Ranges": "bytes"}
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes=") and "," not in wanted:
                start_s, _, end_s = wanted[len("bytes="):].partition("-")
                size = len(content)
                start, end = (size - int(end_s), size - 1) if not start_s else (int(start_s), int(end_s or size - 1))
                start, end = max(start, 0), min(end, size - 1)
                if start > end:
                    return self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
                return self._send(206, content[start:end + 1],
                                  {**headers, "Content-Range": f"bytes {start}-{end}/{size}"},
                                  content_type="application/octet-stream")
            self._send(200, content, headers, content_type="application/octet-stream")

    return Handler
