"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests that push and pull.

It speaks the subset of the Hub API that huggingface_hub 1.33 calls for model, dataset and space
repos: whoami-v2, repos/create and repos/delete, repo info (with and without a revision), preupload
(every file "regular": no LFS, no Xet), the ndjson commit endpoint, tree listing, commit listing,
paths-info, settings, and resolve (HEAD and GET) for downloads and snapshot_download.

Access is checked the way the Hub does: an unknown token gets 401; a read token gets 403 on any
write; a repo is writable only in the token owner's namespace (or one of its orgs); a private repo
answers 401 (no token) or 404 (someone else's token) to reads.

Fault injection: `fail_commits_before = N` answers the next N commit POSTs with 503 before applying
them; `fail_commits_after = N` applies the next N commits and then answers 503 (the response got
lost: a naive retry would commit twice). `commit_posts` counts commit POSTs, `repo(...).commits`
holds the history (the first entry is the repo's "initial commit").

Use through the `fake_hub` fixture in conftest.py, or directly:
    hub = FakeHub(); hub.add_user("alice", "hf_alice_write"); hub.start(); ...; hub.stop()
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Commit:
    oid: str
    title: str
    message: str
    author: str
    date: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None = None
    commits: list[Commit] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit | None:
        if revision in ("main", "HEAD"):
            return self.head
        for c in self.commits:
            if c.oid == revision:
                return c
        return None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeHub:
    """State plus a threaded HTTP server; thread-safe through one lock."""

    def __init__(self):
        self.users: dict[str, dict] = {}  # token -> {"name", "role", "orgs"}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.fail_commits_before = 0
        self.fail_commits_after = 0
        self.commit_posts = 0
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, token or None)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- setup -------------------------------------------------------------------------------
    def add_user(self, name: str, token: str, role: str = "write", orgs: tuple[str, ...] = ()) -> str:
        self.users[token] = {"name": name, "role": role, "orgs": list(orgs)}
        return token

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def commits_made(self, repo_id: str, repo_type: str = "model") -> int:
        """Commits after the repo's initial one."""
        r = self.repo(repo_id, repo_type)
        return 0 if r is None else len(r.commits) - 1

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        r = self.repo(repo_id, repo_type)
        return {} if r is None else dict(r.head.files)

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        return f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---- auth --------------------------------------------------------------------------------
    def _user(self, token: str | None) -> dict | None:
        if token is None:
            return None
        user = self.users.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _can_write_ns(self, user: dict | None, namespace: str) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to write (no token sent)")
        if user["role"] != "write":
            raise HubError(403, "You don't have the rights to write: this token is read-only (needs write access)")
        if namespace != user["name"] and namespace not in user["orgs"]:
            raise HubError(403, f"You don't have the rights to create or write to repos in namespace {namespace}")

    def _readable(self, repo: Repo | None, user: dict | None, repo_id: str) -> Repo:
        if repo is not None and (not repo.private or (user is not None and (
                repo.namespace == user["name"] or repo.namespace in user["orgs"]))):
            return repo
        msg = f"Repository Not Found for url: {repo_id}. Please make sure you specified the correct repo_id and repo_type."
        if user is None:
            raise HubError(401, msg + " If you are trying to access a private or gated repo, make sure you are authenticated.",
                           "RepoNotFound")
        raise HubError(404, msg, "RepoNotFound")

    # ---- operations ----------------------------------------------------------------------------
    def _new_commit(self, repo: Repo, title: str, message: str, author: str, files: dict[str, bytes]) -> Commit:
        h = hashlib.sha1()
        h.update((repo.commits[-1].oid if repo.commits else "").encode())
        h.update(title.encode() + message.encode() + _now().encode() + str(len(repo.commits)).encode())
        for p in sorted(files):
            h.update(p.encode() + git_blob_sha(files[p]).encode())
        c = Commit(h.hexdigest(), title, message, author, _now(), files)
        repo.commits.append(c)
        return c

    def create_repo(self, user: dict | None, payload: dict) -> dict:
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        name = payload.get("name") or ""
        ns = payload.get("organization") or (user["name"] if user else "")
        self._can_write_ns(user, ns)
        if not name or "/" in name:
            raise HubError(400, f"Invalid repo name {name!r}")
        repo_id = f"{ns}/{name}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, "You already created this repo", "RepoExists")
        if repo_type == "space" and not payload.get("sdk"):
            raise HubError(400, "Spaces need an sdk")
        private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        repo = Repo(repo_type, repo_id, private, sdk=payload.get("sdk"))
        self._new_commit(repo, "initial commit", "", "system", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
        self.repos[(repo_type, repo_id)] = repo
        return {"url": f"{self.url}/{prefix}{repo_id}", "name": repo_id, "id": repo_id}

    def commit(self, user: dict | None, repo: Repo, revision: str, body: bytes) -> dict:
        self._can_write_ns(user, repo.namespace)
        if revision not in ("main",):
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        header, files = None, dict(repo.head.files)
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "only base64 file content is supported")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, f"File {value['path']} does not exist")
                files.pop(value["path"])
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    files.pop(p)
            elif key == "lfsFile":
                raise HubError(400, "this test hub stores every file as a regular file (preupload says so)")
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        if header is None or not header.get("summary"):
            raise HubError(400, "commit needs a header with a summary")
        parent = header.get("parentCommit")
        if parent and parent != repo.head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        c = self._new_commit(repo, header["summary"], header.get("description") or "", user["name"], files)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return {"success": True, "commitOid": c.oid, "commitUrl": f"{self.url}/{prefix}{repo.repo_id}/commit/{c.oid}",
                "commitMessage": c.title, "hookOutput": "", "pullRequestUrl": None}

    def repo_info(self, repo: Repo, commit: Commit, blobs: bool) -> dict:
        siblings = []
        for p, data in sorted(commit.files.items()):
            s = {"rfilename": p}
            if blobs:
                s.update(size=len(data), blobId=git_blob_sha(data))
            siblings.append(s)
        info = {"id": repo.repo_id, "author": repo.namespace, "sha": commit.oid, "private": repo.private,
                "gated": False, "disabled": False, "lastModified": commit.date, "createdAt": repo.commits[0].date,
                "tags": [], "likes": 0, "downloads": 0, "siblings": siblings}
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if repo.repo_type == "space":
            info.update(sdk=repo.sdk, runtime={"stage": "BUILDING", "hardware": {"current": None, "requested": None},
                                               "storage": None, "gcTimeout": None, "replicas": {"current": 1, "requested": 1}})
        return info

    @staticmethod
    def validate_yaml(payload: dict) -> dict:
        """README front matter must be a YAML mapping (the Hub checks much more; a parse is what we need)."""
        import yaml

        text = payload.get("content") or ""
        if text.startswith("---"):
            end = text.find("\n---", 3)
            if end == -1:
                raise HubError(400, "README front matter is not closed with ---")
            try:
                meta = yaml.safe_load(text[3:end])
            except yaml.YAMLError as e:
                raise HubError(400, f"Invalid YAML in README front matter: {e}")
            if meta is not None and not isinstance(meta, dict):
                raise HubError(400, "README front matter must be a mapping")
        return {"errors": [], "warnings": []}

    @staticmethod
    def tree(commit: Commit, path: str, recursive: bool) -> list[dict]:
        path = path.strip("/")
        prefix = path + "/" if path else ""
        out, dirs = [], set()
        for p, data in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                d = prefix + "/".join(parts[:i])
                if (recursive or i == 1) and d not in dirs:
                    dirs.add(d)
                    out.append({"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0})
            if recursive or len(parts) == 1:
                out.append({"type": "file", "path": p, "size": len(data), "oid": git_blob_sha(data)})
        return out


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: pytest shows failures, not access logs
        pass

    # ---- plumbing ------------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, e: HubError):
        headers = {"X-Error-Message": e.message}
        if e.code:
            headers["X-Error-Code"] = e.code
        self._json({"error": e.message}, e.status, headers)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str):
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        body = self._body() if method in ("POST", "PUT", "DELETE") else b""
        hub = self.hub
        token = self._token()
        hub.requests.append((method, path, token))
        try:
            with hub.lock:
                user = hub._user(token)
                self._route(method, path, query, body, user)
        except HubError as e:
            self._error(e)
        except (ValueError, KeyError) as e:
            self._error(HubError(400, f"bad request: {e}"))

    def _repo_from(self, parts: list[str]) -> tuple[str, str, list[str]]:
        """`parts` after /api/: [models|datasets|spaces, ns, name, rest...]."""
        if len(parts) < 3 or parts[0] not in ("models", "datasets", "spaces"):
            raise HubError(404, "Not Found")
        return parts[0][:-1], f"{parts[1]}/{parts[2]}", parts[3:]

    def _route(self, method: str, path: str, query: dict, body: bytes, user: dict | None):
        hub = self.hub
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"]:
            parts = parts[1:]
            if parts == ["whoami-v2"]:
                if user is None:
                    raise HubError(401, "Invalid username or password.")
                return self._json({"type": "user", "name": user["name"], "fullname": user["name"].title(),
                                   "orgs": [{"name": o, "type": "org"} for o in user["orgs"]],
                                   "auth": {"type": "access_token",
                                            "accessToken": {"displayName": "test", "role": user["role"]}}})
            if parts == ["validate-yaml"] and method == "POST":
                return self._json(self.hub.validate_yaml(json.loads(body or b"{}")))
            if parts == ["repos", "create"] and method == "POST":
                return self._json(hub.create_repo(user, json.loads(body or b"{}")))
            if parts == ["repos", "delete"] and method == "DELETE":
                p = json.loads(body or b"{}")
                rid = f"{p.get('organization') or (user or {}).get('name')}/{p.get('name')}"
                rtype = p.get("type") or "model"
                hub._can_write_ns(user, rid.split("/")[0])
                if hub.repos.pop((rtype, rid), None) is None:
                    raise HubError(404, "Repository Not Found", "RepoNotFound")
                return self._json({})
            repo_type, repo_id, rest = self._repo_from(parts)
            repo = hub.repos.get((repo_type, repo_id))
            if method == "POST" and rest[:1] == ["commit"]:
                repo = hub._readable(repo, user, repo_id)
                hub._can_write_ns(user, repo.namespace)
                hub.commit_posts += 1
                if hub.fail_commits_before > 0:
                    hub.fail_commits_before -= 1
                    raise HubError(503, "Service Unavailable (injected)")
                result = hub.commit(user, repo, rest[1] if len(rest) > 1 else "main", body)
                if hub.fail_commits_after > 0:
                    hub.fail_commits_after -= 1
                    raise HubError(503, "Service Unavailable (injected after the commit was applied)")
                return self._json(result)
            repo = hub._readable(repo, user, repo_id)
            if method == "POST" and rest[:1] == ["preupload"]:
                hub._can_write_ns(user, repo.namespace)
                files = json.loads(body)["files"]
                head = repo.head.files
                return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                              "oid": git_blob_sha(head[f["path"]]) if f["path"] in head else None}
                                             for f in files], "commitOid": repo.head.oid})
            if method == "PUT" and rest == ["settings"]:
                hub._can_write_ns(user, repo.namespace)
                p = json.loads(body or b"{}")
                if "private" in p:
                    repo.private = bool(p["private"])
                if "visibility" in p:
                    repo.private = p["visibility"] != "public"
                repo.settings.update(p)
                return self._json({"private": repo.private})
            if method in ("POST", "PUT", "DELETE"):
                if rest in (["secrets"], ["variables"]):
                    hub._can_write_ns(user, repo.namespace)
                    p = json.loads(body or b"{}")
                    store = repo.settings.setdefault(rest[0], {})
                    if method == "DELETE":
                        store.pop(p.get("key"), None)
                    else:
                        store[p["key"]] = p.get("value")
                    return self._json({})
                raise HubError(404, f"Not Found: {method} {path}")
            if not rest:
                return self._json(hub.repo_info(repo, repo.head, "blobs" in query))
            rev = rest[1] if len(rest) > 1 else "main"
            commit = repo.at(rev)
            if commit is None:
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            if rest[0] == "revision":
                return self._json(hub.repo_info(repo, commit, "blobs" in query))
            if rest[0] == "tree":
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return self._json(hub.tree(commit, "/".join(rest[2:]), recursive))
            if rest[0] == "commits":
                idx = repo.commits.index(commit)
                return self._json([{"id": c.oid, "authors": [{"user": c.author}], "date": c.date, "title": c.title,
                                    "message": c.message} for c in reversed(repo.commits[: idx + 1])])
            if rest[0] == "refs":
                return self._json({"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head.oid}],
                                   "converts": [], "tags": []})
            raise HubError(404, f"Not Found: {path}")
        if method == "POST" and len(parts) >= 4 and parts[0] == "api":
            raise HubError(404, "Not Found")
        # /{ns}/{name}/resolve/{rev}/{path} (models), /datasets/..., /spaces/...
        repo_type = "model"
        if parts[:1] in (["datasets"], ["spaces"]):
            repo_type, parts = parts[0][:-1], parts[1:]
        if len(parts) < 5 or parts[2] != "resolve" or method not in ("GET", "HEAD"):
            raise HubError(404, f"Not Found: {method} {path}")
        repo_id, rev, fpath = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        repo = hub._readable(hub.repos.get((repo_type, repo_id)), user, repo_id)
        commit = repo.at(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        if fpath not in commit.files:
            raise HubError(404, f"Entry not found: {fpath}", "EntryNotFound")
        data = commit.files[fpath]
        self._send(200, data, {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_sha(data)}"'},
                   ctype="application/octet-stream")
