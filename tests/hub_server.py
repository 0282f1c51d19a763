"""A local stand-in for the Hugging Face Hub: the endpoints huggingface_hub 2.4's `create_repo` and `upload_folder`
(legacy LFS path) use, and those `list_repo_files` + `hf_hub_download` read back. No network; stores repos in memory.

Endpoints (as huggingface_hub calls them):

- `POST /api/repos/create`                                     create_repo (409 when it exists)
- `POST /api/validate-yaml`                                    create_commit checks README.md's YAML first
- `POST /api/models/{repo}/preupload/{revision}`               upload mode per file ("lfs" for binaries, as the Hub)
- `POST /{repo}.git/info/lfs/objects/batch`                    LFS batch: where to PUT each LFS object
- `PUT  /lfs-storage/{oid}`, `POST /lfs-verify`                the LFS object store (checks sha256 and size)
- `POST /api/models/{repo}/commit/{revision}`                  NDJSON commit: header, file (base64), lfsFile
- `GET  /api/models/{repo}/tree/{revision}`                    file listing
- `HEAD|GET /{repo}/resolve/{revision}/{path}`                 file download

The stand-in does not speak the Xet storage protocol: tests run huggingface_hub with `HF_HUB_DISABLE_XET`, which makes
it use the legacy LFS protocol above (what it does whenever `hf_xet` is not installed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml

_BINARY_SUFFIXES = (".safetensors", ".png", ".jpg", ".bin", ".pt")


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)


@dataclass
class HubState:
    tokens: set[str]
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    state: HubState
    base_url: str
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    # -- plumbing ------------------------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload=None, *, headers: dict[str, str] | None = None, raw: bytes | None = None):
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer ") and header[len("Bearer ") :] in self.state.tokens:
            return True
        self._send(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._send(404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
        return repo

    def _route(self, method: str) -> None:
        path = unquote(urlparse(self.path).path)
        with self.state.lock:
            self.state.requests.append((method, path))
        routes = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", self._lfs_batch),
            ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", self._lfs_put),
            ("POST", r"/lfs-verify", self._lfs_verify),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", self._commit),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)", self._tree),
            ("GET", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                handler(**match.groupdict())
                return
        self._body()
        self._send(404, {"error": f"stand-in Hub has no route {method} {path}"})

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    # -- endpoints -----------------------------------------------------------------------------------------------------

    def _create_repo(self):
        payload = json.loads(self._body())
        if not self._authorized():
            return
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.base_url}/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:
                self._send(409, {"error": "You already created this model repo", "url": url})
                return
            self.state.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        self._send(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()})

    def _validate_yaml(self):
        payload = json.loads(self._body())
        match = re.match(r"---\n(.*?)\n---\n", payload["content"], flags=re.S)
        try:
            if match is None:
                raise ValueError("README.md has no YAML front matter")
            data = yaml.safe_load(match.group(1))
            if not isinstance(data, dict):
                raise ValueError("YAML front matter is not a mapping")
        except (ValueError, yaml.YAMLError) as error:
            self._send(400, {"errors": [{"message": str(error)}], "warnings": []})
            return
        self._send(200, {"errors": [], "warnings": []})

    def _preupload(self, repo: str, rev: str):
        payload = json.loads(self._body())
        if not self._authorized() or self._repo(repo) is None:
            return
        files = [
            {
                "path": item["path"],
                "uploadMode": "lfs" if item["path"].endswith(_BINARY_SUFFIXES) else "regular",
                "shouldIgnore": False,
                "oid": None,
            }
            for item in payload["files"]
        ]
        self._send(200, {"files": files, "commitOid": "0" * 40})

    def _lfs_batch(self, repo: str):
        payload = json.loads(self._body())
        if not self._authorized() or self._repo(repo) is None:
            return
        objects = [
            {
                "oid": item["oid"],
                "size": item["size"],
                "authenticated": True,
                "actions": {
                    "upload": {"href": f"{self.base_url}/lfs-storage/{item['oid']}"},
                    "verify": {"href": f"{self.base_url}/lfs-verify"},
                },
            }
            for item in payload["objects"]
        ]
        self._send(200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, oid: str):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            self._send(400, {"error": "sha256 mismatch"})
            return
        with self.state.lock:
            self.state.lfs_objects[oid] = data
        self._send(200, {})

    def _lfs_verify(self):
        payload = json.loads(self._body())
        stored = self.state.lfs_objects.get(payload["oid"])
        if stored is None or len(stored) != payload["size"]:
            self._send(404, {"error": "object not uploaded"})
            return
        self._send(200, {})

    def _commit(self, repo: str, rev: str):
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not self._authorized():
            return
        target = self._repo(repo)
        if target is None:
            return
        changes: dict[str, bytes | None] = {}
        header = None
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
            elif key == "file":
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                data = self.state.lfs_objects.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    self._send(422, {"error": f"LFS object {value['oid']} of {value['path']} was not uploaded"})
                    return
                changes[value["path"]] = data
            elif key == "deletedFile":
                changes[value["path"]] = None
            else:
                self._send(400, {"error": f"unsupported commit operation {key!r}"})
                return
        if header is None or not header.get("summary"):
            self._send(400, {"error": "commit header with a summary is required"})
            return
        with self.state.lock:
            for path, data in changes.items():
                if data is None:
                    target.files.pop(path, None)
                else:
                    target.files[path] = data
            oid = hashlib.sha1(f"{repo}{len(target.commits)}{sorted(changes)}".encode()).hexdigest()
            target.commits.append({"oid": oid, "summary": header["summary"], "paths": sorted(changes)})
        self._send(200, {"commitUrl": f"{self.base_url}/{repo}/commit/{oid}", "commitOid": oid})

    def _head_oid(self, repo: Repo) -> str:
        return repo.commits[-1]["oid"] if repo.commits else "0" * 40

    def _tree(self, repo: str, rev: str):
        target = self._repo(repo)
        if target is None:
            return
        entries = [
            {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            for path, data in sorted(target.files.items())
        ]
        self._send(200, entries)

    def _resolve(self, repo: str, rev: str, file: str):
        target = self._repo(repo)
        if target is None:
            return
        data = target.files.get(file)
        if data is None:
            self._send(404, {"error": "Entry not found"}, headers={"X-Error-Code": "EntryNotFound"})
            return
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        headers = {"ETag": etag, "X-Repo-Commit": self._head_oid(target)}
        self._send(200, headers=headers, raw=data)


class StandInHub:
    """Run the stand-in Hub on 127.0.0.1 in a thread; `url` is the endpoint to pass to huggingface_hub.

    Example:

    ```py
    with StandInHub(tokens={"hf_good"}) as hub:
        HfApi(endpoint=hub.url, token="hf_good").create_repo("me/slider")
    ```
    """

    def __init__(self, *, tokens: set[str]):
        self.state = HubState(tokens=set(tokens))
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        handler.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.url = handler.base_url
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StandInHub:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
