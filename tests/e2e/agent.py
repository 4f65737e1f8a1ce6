"""Deploy real apps through the official ``zephyr-agent`` (npm) for end-to-end tests.

Pieces (observed wire traffic in ``WIRE.md`` beside this file):

- ``install_agents()``: ``npm install zephyr-agent@<v>`` for every version in
  ``AGENT_VERSIONS``, each in its own folder under ``.cache/zephyr-agents/`` at the repo root
  (``.gitignore`` needs a ``.cache/`` line; ``ZE_E2E_AGENT_CACHE`` overrides the folder),
  reused when present and complete.
- ``ControlPlaneStub``: the control plane the agent asks for its application config (which
  names the worker, ``EDGE_URL``, and carries the write JWT), build ids, logs, build stats.
- ``make_app_dir()`` / ``sample_app_files()``: an app folder as the agent needs it (git repo
  with a commit and ``remote.origin.url``, ``package.json``, ``dist/``).
- ``deploy()``: runs ``uploadOutputToZephyr`` of one agent version in node, isolated HOME,
  bounded time; returns a ``DeployResult`` (raises ``DeployError`` unless ``check=False``).
- ``application_uid()``: the application uid the agent derives from name + git remote.

Everything listens on / talks to 127.0.0.1 only: the agent's one outside call (npm dist-tags
for its "outdated plugin" warning) is sent to a loopback proxy address that refuses it.

Typical use (``worker_url``: the real worker, or ``RecordingEdge().url`` in self-tests)::

    agents = install_agents()                      # once per session
    async with ControlPlaneStub(edge_url=worker_url, jwt_secret=SECRET) as stub:
        app = make_app_dir(tmp_path / "app", sample_app_files("1.2.2"))
        res = await deploy("1.2.2", app, stub.url, agents=agents)
        res.version_url                            # the worker's urls.version answer
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from aiohttp import web

from tests.e2e.loopback import LoopbackServer

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Default cache of installed agents; ``.cache/`` is git-ignored at the repo root.
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "zephyr-agents"
#: Environment variable overriding the cache folder.
ENV_CACHE_DIR = "ZE_E2E_AGENT_CACHE"

AGENT_VERSIONS: tuple[str, ...] = ("1.2.2", "1.0.1")
#: Whether ``uploadOutputToZephyr`` of that version adds ``zephyr-manifest.json`` itself.
#: 1.2.x: ``zephyr-engine/index.js`` ``upload_assets`` adds one unless the output has it.
#: 1.0.x: only when ``federated_dependencies`` is set, which ``uploadOutputToZephyr`` never
#: does, so the app must ship its own.
AGENT_GENERATES_MANIFEST: dict[str, bool] = {"1.2.2": True, "1.0.1": False}

NPM_INSTALL_TIMEOUT_S = 300.0
DEPLOY_TIMEOUT_S = 120.0
#: After the deploy promise settles, node gets this long to drain its event loop before
#: the script exits it (agent 1.0.1 can leave handles open).
NODE_EXIT_GRACE_MS = 3000
_COMPLETE_MARKER = ".ze-e2e-complete"
RESULT_MARK = "__ZE_E2E_RESULT__"

DEFAULT_REMOTE = "https://github.com/test-org/test-repo.git"
DEFAULT_APP_NAME = "e2e-app"
DEFAULT_APP_VERSION = "1.0.0"
MANIFEST_FILENAME = "zephyr-manifest.json"


class AgentInstallError(RuntimeError):
    """npm could not install an agent version."""


class DeployError(RuntimeError):
    """The agent's deploy failed or timed out; the message carries its output."""

    def __init__(self, message: str, result: "DeployResult") -> None:
        super().__init__(message)
        self.result = result


# -- installing the agents -------------------------------------------------------------


def agent_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR)


def _installed_version(node_modules: Path) -> str | None:
    try:
        return json.loads((node_modules / "zephyr-agent" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _is_complete(folder: Path, version: str) -> bool:
    marker = folder / _COMPLETE_MARKER
    return (
        marker.is_file()
        and marker.read_text().strip() == version
        and _installed_version(folder / "node_modules") == version
    )


def install_agents(
    cache_dir: str | os.PathLike[str] | None = None,
    versions: tuple[str, ...] = AGENT_VERSIONS,
    timeout_s: float = NPM_INSTALL_TIMEOUT_S,
    npm: str | None = None,
) -> dict[str, Path]:
    """Install each ``zephyr-agent`` version in ``<cache>/zephyr-agent-<v>/``; return
    ``{version: node_modules path}``.

    A folder is reused when its completion marker and installed version match; otherwise it
    is wiped and installed again. An exclusive lock on ``<cache>/.lock`` serialises
    concurrent callers. Raises ``AgentInstallError`` (with npm's output) when npm is missing,
    fails, or exceeds ``timeout_s`` per version. ``npm``: the npm executable (default: PATH's).
    """
    cache = agent_cache_dir(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    npm = npm or shutil.which("npm")
    out: dict[str, Path] = {}
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for version in versions:
            folder = cache / f"zephyr-agent-{version}"
            if not _is_complete(folder, version):
                if npm is None or shutil.which("node") is None:
                    raise AgentInstallError("node and npm must be on PATH to install zephyr-agent")
                _npm_install(npm, folder, version, timeout_s)
            out[version] = folder / "node_modules"
    return out


def _npm_install(npm: str, folder: Path, version: str, timeout_s: float) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(
        json.dumps({"name": f"ze-e2e-agent-{version.replace('.', '-')}", "private": True}, indent=2)
    )
    env = dict(os.environ)
    env.update(
        npm_config_update_notifier="false",
        npm_config_fund="false",
        npm_config_audit="false",
        npm_config_fetch_timeout="60000",
        npm_config_fetch_retries="2",
    )
    env.pop("CI", None)
    cmd = [
        npm, "install", "--no-audit", "--no-fund", "--no-progress", "--ignore-scripts",
        "--save-exact", "--loglevel=error", f"zephyr-agent@{version}",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # npm and everything it started
        stdout, stderr = proc.communicate(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
        raise AgentInstallError(
            f"npm install zephyr-agent@{version} exceeded {timeout_s:.0f}s\n"
            f"stdout:\n{stdout}\nstderr:\n{stderr}"
        ) from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if proc.returncode != 0 or _installed_version(folder / "node_modules") != version:
        shutil.rmtree(folder, ignore_errors=True)
        raise AgentInstallError(
            f"npm install zephyr-agent@{version} failed (exit {proc.returncode}) in {folder}\n"
            f"stdout:\n{stdout}\nstderr:\n{stderr}"
        )
    (folder / _COMPLETE_MARKER).write_text(version)
    log.info("installed zephyr-agent@%s in %.1fs", version, time.monotonic() - started)


# -- application uid -------------------------------------------------------------------

_STANDARD_GIT_HOSTS = {"github.com", "gitlab.com", "bitbucket.org"}


def parse_git_remote(remote_url: str) -> tuple[str, str]:
    """``(org, project)`` from a git remote, as agent 1.2.2's
    ``lib/build-context/git-provider-utils.js`` (git-url-parse) derives them for
    github.com / gitlab.com / bitbucket.org and for self-hosted servers (whose org is the
    server's domain without its first label, dots as dashes). Azure DevOps is not handled.
    """
    m = re.match(r"^(?:[\w.+-]+@)?([^/:]+):(?!//)(?:\d+/)?(.+)$", remote_url)  # scp-like
    if m and "://" not in remote_url:
        host, path = m.group(1), m.group(2)
    else:
        parts = urlsplit(remote_url)
        host, path = parts.hostname or "", parts.path
    host = host.lower()
    segs = [s for s in path.split("/") if s]
    if len(segs) < 2:
        raise ValueError(f"cannot parse org/repo from git remote {remote_url!r}")
    if "azure" in host or "visualstudio" in host:
        raise ValueError("Azure DevOps remotes are not supported by this helper")
    name = re.sub(r"\.git$", "", segs[-1]).lower()
    if host in _STANDARD_GIT_HOSTS:
        owner = "/".join(segs[:-1]).lower()
        return owner.split("/")[0] if host != "github.com" else owner, name
    labels = host.split(".")
    base = ".".join(labels[1:]) if len(labels) > 2 else host
    return base.replace(".", "-").lower(), name


def create_application_uid(name: str, project: str, org: str) -> str:
    """zephyr-edge-contract ``createApplicationUid``: ``name.project.org``, every char
    outside ``[a-zA-Z0-9-]`` replaced by ``-``, lower-cased."""
    clean = lambda s: re.sub(r"[^a-zA-Z0-9-]", "-", s)  # noqa: E731
    return ".".join((clean(name), clean(project), clean(org))).lower()


def application_uid(app_name: str, remote_url: str = DEFAULT_REMOTE) -> str:
    """The application uid the agent derives from package.json ``name`` and the git remote."""
    org, project = parse_git_remote(remote_url)
    return create_application_uid(app_name, project, org)


def asset_hash(filename: str, body: bytes) -> str:
    """The asset hash as the agent computes it (``lib/transformers/ze-build-assets.js``):
    ``sha256(body or P)`` then ``update(P)``, hex (P = UTF-8 filename)."""
    p = filename.encode("utf-8")
    h = hashlib.sha256(body or p)
    h.update(p)
    return h.hexdigest()


# -- the control-plane stub ------------------------------------------------------------


@dataclass
class StubRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ControlPlaneStub(LoopbackServer):
    """A stub of Zephyr's control plane API (``ZE_API_GATE`` / ``ZE_API``), the only source of
    the worker's address (``EDGE_URL``) and write token for the agent.

    ``GET /application-config/<uid>`` answers an application config naming ``edge_url``
    as ``EDGE_URL`` with a fresh HS256 write JWT ``{application_uid, can_write: true, exp}``
    signed with ``jwt_secret``; ``GET /build-id`` answers ``{user_uuid: "<n>"}`` with ``n``
    increasing per call; ``POST /logs`` and ``POST /build-stats`` answer what the agents
    require. Any other request is recorded in ``unknown``, logged, and answered 404.
    Requests arriving as a proxy (``CONNECT`` or an absolute URI: the agent's npm
    dist-tags check, sent here through ``HTTPS_PROXY``) are recorded in ``proxied`` and
    refused, so nothing leaves loopback.
    """

    edge_url: str
    jwt_secret: str
    username: str = "tester"
    user_uuid: str = "u1"
    email: str = "tester@example.com"
    delimiter: str = "-"
    platform: str = "custom"
    jwt_ttl_s: int = 3600
    build_id_start: int = 1
    extra_config: dict[str, Any] = field(default_factory=dict)
    #: Overrides the write JWT given for an application uid (e.g. a wrong-secret token).
    jwt_factory: Callable[[str], str] | None = None
    #: Seconds to wait before answering a path, e.g. ``{"/build-id": 0.5}``.
    delays: dict[str, float] = field(default_factory=dict)
    host: str = "127.0.0.1"

    requests: list[StubRequest] = field(default_factory=list)
    unknown: list[StubRequest] = field(default_factory=list)
    proxied: list[StubRequest] = field(default_factory=list)
    build_ids: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # application_uid -> last JWT given

    _next_build_id: int = 0
    _runner: web.AppRunner | None = None
    _port: int = 0

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._record])
        app.router.add_get("/application-config/{uid}", self._app_config)
        app.router.add_get("/build-id", self._build_id)
        app.router.add_post("/logs", self._logs)
        app.router.add_post("/build-stats", self._build_stats)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        return app

    async def start(self) -> "ControlPlaneStub":
        self._next_build_id = self.build_id_start
        return await super().start()

    def of_path(self, prefix: str) -> list[StubRequest]:
        return [r for r in self.requests if r.path.startswith(prefix)]

    def make_jwt(self, uid: str) -> str:
        if self.jwt_factory is not None:
            return self.jwt_factory(uid)
        claims = {"application_uid": uid, "can_write": True, "exp": int(time.time()) + self.jwt_ttl_s}
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        rec = StubRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
        )
        target = request.raw_path
        if request.method == "CONNECT" or target.startswith(("http://", "https://")) or not target.startswith("/"):
            self.proxied.append(rec)
            return web.Response(status=403, text="the e2e stub is not a proxy")
        self.requests.append(rec)
        if self.delays.get(request.path):
            await asyncio.sleep(self.delays[request.path])
        return await handler(request)

    async def _app_config(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        token = self.make_jwt(uid)
        self.tokens[uid] = token
        value = {
            "application_uid": uid,
            "BUILD_ID_ENDPOINT": f"{self.url}/build-id",
            "EDGE_URL": self.edge_url,
            "DELIMITER": self.delimiter,
            "PLATFORM": self.platform,
            "email": self.email,
            "jwt": token,
            "user_uuid": self.user_uuid,
            "username": self.username,
            **self.extra_config,
        }
        return web.json_response({"value": value})

    async def _build_id(self, request: web.Request) -> web.Response:
        build_id = str(self._next_build_id)
        self._next_build_id += 1
        self.build_ids.append(build_id)
        return web.json_response({self.user_uuid: build_id})

    async def _logs(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _build_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "targets": []})

    async def _unknown(self, request: web.Request) -> web.Response:
        rec = self.requests[-1]
        self.unknown.append(rec)
        log.warning("control-plane stub: unknown request %s %s?%s", rec.method, rec.path, rec.query)
        return web.Response(status=404, text="unknown to the e2e control-plane stub")


# -- app folders -----------------------------------------------------------------------


def _vendor_js(size: int = 96 * 1024) -> bytes:
    line = b"/* vendor */ export const v%05d = %d;\n"
    out, i = bytearray(), 0
    while len(out) < size:
        out += line % (i, i * 7919)
        i += 1
    return bytes(out[:size])


def static_manifest() -> bytes:
    """A ``zephyr-manifest.json`` like the one agent 1.2.x generates, with a fixed timestamp."""
    manifest = {"version": "1.0.0", "timestamp": "2024-01-01T00:00:00.000Z", "dependencies": {}, "zeVars": {}}
    return json.dumps(manifest, indent=2).encode()


#: The non-ASCII file name of the sample app (Latin-1 and CJK characters).
UNICODE_JS = "assets/ünïcødé-文件.js"


def sample_app_files(agent_version: str | None = None) -> dict[str, bytes]:
    """The default sample app's ``dist/`` content (path relative to ``dist/`` -> bytes).

    With an ``agent_version`` that does not generate ``zephyr-manifest.json`` itself
    (``AGENT_GENERATES_MANIFEST``), a static one is included.
    """
    files = {
        "index.html": (
            b"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>e2e</title>\n"
            b"<link rel=\"stylesheet\" href=\"/assets/style-9b1e.css\"></head>\n"
            b"<body><div id=\"app\"></div>\n"
            b"<script type=\"module\" src=\"/assets/main-3f2a1c.js\"></script></body></html>\n"
        ),
        "assets/main-3f2a1c.js": b"import './vendor.js';\nimport './nested/deep/x.js';\n"
        b"document.getElementById('app').textContent = 'hello from e2e';\n",
        "assets/vendor.js": _vendor_js(),
        "assets/style-9b1e.css": b"#app { font-family: sans-serif; color: #333; }\n",
        "assets/nested/deep/x.js": b"export const deep = 'x';\n",
        "data/config.json": json.dumps({"feature": True, "name": "e2e", "items": [1, 2, 3]}).encode(),
        "empty.txt": b"",
        "assets/logo.png": bytes(range(256)) * 4,  # binary, not valid UTF-8
        UNICODE_JS: "export const s = 'ünïcødé 文件';\n".encode(),
    }
    if agent_version is not None and not AGENT_GENERATES_MANIFEST.get(agent_version, False):
        files[MANIFEST_FILENAME] = static_manifest()
    return files


@dataclass
class AppDir:
    path: Path
    name: str
    version: str
    remote_url: str
    output_dir: str
    files: dict[str, bytes]

    @property
    def dist(self) -> Path:
        return self.path / self.output_dir

    @property
    def application_uid(self) -> str:
        return application_uid(self.name, self.remote_url)

    def write(self, files: Mapping[str, bytes]) -> None:
        """Add or replace files in the output folder (no commit needed by the agent)."""
        for rel, data in files.items():
            target = self.dist / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            self.files[rel] = data

    def remove(self, rel: str) -> None:
        (self.dist / rel).unlink()
        self.files.pop(rel, None)


_GIT_ENV = {
    "GIT_AUTHOR_NAME": "E2E Tester",
    "GIT_AUTHOR_EMAIL": "e2e@example.com",
    "GIT_COMMITTER_NAME": "E2E Tester",
    "GIT_COMMITTER_EMAIL": "e2e@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}


def _git(path: Path, *args: str) -> None:
    env = {**os.environ, **_GIT_ENV}
    subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True, timeout=30)


def make_app_dir(
    path: str | os.PathLike[str],
    files: Mapping[str, bytes] | None = None,
    name: str = DEFAULT_APP_NAME,
    version: str = DEFAULT_APP_VERSION,
    *,
    remote_url: str = DEFAULT_REMOTE,
    output_dir: str = "dist",
    branch: str = "main",
) -> AppDir:
    """Create an app folder: a git repo (one commit on ``branch``, ``remote.origin.url``),
    ``package.json`` with ``name``/``version``, and ``output_dir`` holding ``files``
    (default: ``sample_app_files()``, without a manifest)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"app folder {root} is not empty")
    app = AppDir(root, name, version, remote_url, output_dir, {})
    (root / "package.json").write_text(json.dumps({"name": name, "version": version, "private": True}, indent=2) + "\n")
    app.write(sample_app_files() if files is None else files)
    _git(root, "init", "-q", "-b", branch)
    _git(root, "remote", "add", "origin", remote_url)
    _git(root, "add", "-A")
    _git(root, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "e2e app")
    return app


# -- deploying -------------------------------------------------------------------------

_NODE_SCRIPT = r"""
'use strict';
const MARK = %(mark)s;
const GRACE_MS = %(grace)d;
const agent = require(process.env.ZE_E2E_AGENT_PATH);
const opts = JSON.parse(process.env.ZE_E2E_OPTS);
function describe(e, depth) {
  if (e === null || e === undefined || depth > 4) return null;
  if (typeof e !== 'object') return { message: String(e) };
  const out = { name: e.name, code: e.code, message: e.message };
  if (e.template) out.template = e.template;
  if (e.data) { try { out.data = JSON.parse(JSON.stringify(e.data)); } catch (_) {} }
  if (e.cause) out.cause = describe(e.cause, depth + 1);
  if (e.stack) out.stack = String(e.stack).split('\n').slice(0, 8).join('\n');
  return out;
}
function report(obj) { process.stdout.write('\n' + MARK + JSON.stringify(obj) + '\n'); }
(async () => {
  const started = Date.now();
  try {
    const result = await agent.uploadOutputToZephyr(opts);
    report({ ok: true, result, ms: Date.now() - started });
  } catch (e) {
    report({ ok: false, error: describe(e, 0), ms: Date.now() - started });
    process.exitCode = 1;
  }
  setTimeout(() => process.exit(), GRACE_MS).unref();
})();
"""


@dataclass
class DeployResult:
    agent_version: str
    returncode: int | None  # None: killed on timeout
    stdout: str
    stderr: str
    duration_s: float
    ok: bool
    deployment_url: str | None
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    timed_out: bool = False
    pid: int = 0

    @property
    def version_url(self) -> str | None:
        """The version URL: what ``uploadOutputToZephyr`` returned as ``deploymentUrl``."""
        return self.deployment_url

    def output(self, limit: int = 8000) -> str:
        def tail(s: str) -> str:
            return s if len(s) <= limit else "[...]" + s[-limit:]

        return f"--- stdout ---\n{tail(self.stdout)}\n--- stderr ---\n{tail(self.stderr)}"


def agent_env(stub_url: str, home: Path, secret_token: str = "e2e-secret-token", extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for one agent run: a minimal one, not the test runner's (no ``CI``
    or other CI variables, no real proxies, no ``ZE_*`` leaking in). Proxies point at the
    stub, which refuses them: only ``NO_PROXY`` hosts (127.0.0.1, localhost, *.localhost)
    are reached directly; add to ``NO_PROXY``/``no_proxy`` through ``extra`` if a test's
    worker has another (loopback) name."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "ZE_API_GATE": stub_url,
        "ZE_API": stub_url,
        "ZE_SECRET_TOKEN": secret_token,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        # The agent's only outside call (npm dist-tags, agent lib/version/
        # outdated-plugin-warning.js) goes through HTTPS_PROXY: point it at the stub,
        # which refuses it, so nothing leaves loopback.
        "HTTPS_PROXY": stub_url,
        "https_proxy": stub_url,
        "HTTP_PROXY": stub_url,
        "http_proxy": stub_url,
        "NO_COLOR": "1",
        "FORCE_COLOR": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    if extra:
        env.update(extra)
    return env


async def deploy(
    agent_version: str,
    app_dir: AppDir | str | os.PathLike[str],
    stub_url: str,
    *,
    agents: Mapping[str, Path] | None = None,
    home: str | os.PathLike[str] | None = None,
    output_dir: str | None = None,
    timeout_s: float = DEPLOY_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
    check: bool = True,
) -> DeployResult:
    """Deploy ``app_dir`` with ``zephyr-agent@agent_version`` against the control plane
    at ``stub_url`` (whose application config names the worker).

    Runs ``node`` with the app folder as working directory and a script calling
    ``require('zephyr-agent').uploadOutputToZephyr({rootDir, outputDir, ssr: false,
    builder: 'custom', ...options})`` (same signature in 1.0.1 and 1.2.2:
    ``dist/lib/upload-output-to-zephyr.js``). ``home`` (default: a fresh temporary folder,
    removed afterwards) is the agent's HOME: it caches the hash list and app config in
    ``~/.zephyr``, so reuse one only on purpose. The process group is killed after
    ``timeout_s``. Raises ``DeployError`` with the agent's output on failure when ``check``.
    """
    agents = await asyncio.to_thread(install_agents) if agents is None else agents
    try:
        node_modules = Path(agents[agent_version])
    except KeyError:
        raise ValueError(f"agent {agent_version} not installed (have {sorted(agents)})") from None
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH")
    root = Path(app_dir.path if isinstance(app_dir, AppDir) else app_dir).resolve()
    out_dir = output_dir or (app_dir.output_dir if isinstance(app_dir, AppDir) else "dist")

    own_home = home is None
    home_path = Path(tempfile.mkdtemp(prefix="ze-e2e-home-")) if own_home else Path(home)
    try:
        (home_path / "tmp").mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=home_path / "tmp"))
        script = run_dir / "deploy.cjs"
        script.write_text(_NODE_SCRIPT % {"mark": json.dumps(RESULT_MARK), "grace": NODE_EXIT_GRACE_MS})
        opts = {"rootDir": str(root), "outputDir": str(root / out_dir), "ssr": False, "builder": "custom"}
        opts.update(options or {})
        run_env = agent_env(stub_url, home_path, extra=env)
        run_env["ZE_E2E_AGENT_PATH"] = str(node_modules / "zephyr-agent")
        run_env["ZE_E2E_OPTS"] = json.dumps(opts)
        stdout_path, stderr_path = run_dir / "stdout", run_dir / "stderr"
        started = time.monotonic()
        timed_out = False
        with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
            proc = await asyncio.create_subprocess_exec(
                node, str(script), cwd=root, env=run_env, stdin=subprocess.DEVNULL,
                stdout=so, stderr=se, start_new_session=True,
            )  # fmt: skip
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except asyncio.TimeoutError:
                timed_out = True
            finally:
                if proc.returncode is None:
                    await _kill_group(proc)
        duration = time.monotonic() - started
        stdout = stdout_path.read_text(errors="replace")
        stderr = stderr_path.read_text(errors="replace")
    finally:
        if own_home:
            shutil.rmtree(home_path, ignore_errors=True)

    report = _parse_report(stdout)
    ok = bool(report and report.get("ok")) and proc.returncode == 0 and not timed_out
    result_obj = (report or {}).get("result")
    res = DeployResult(
        agent_version=agent_version,
        returncode=None if timed_out else proc.returncode,
        stdout=stdout,
        stderr=stderr,
        duration_s=duration,
        ok=ok,
        deployment_url=(result_obj or {}).get("deploymentUrl"),
        error=(report or {}).get("error"),
        result=result_obj,
        timed_out=timed_out,
        pid=proc.pid,
    )
    if check and not ok:
        why = f"timed out after {timeout_s:.0f}s" if timed_out else f"exit {proc.returncode}"
        err = json.dumps(res.error, indent=2)[:4000] if res.error else "(no result reported)"
        raise DeployError(f"zephyr-agent@{agent_version} deploy failed ({why}): {err}\n{res.output()}", res)
    return res


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), wait)
            return
        except asyncio.TimeoutError:
            continue


def _parse_report(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            try:
                return json.loads(line[len(RESULT_MARK):])
            except ValueError:
                return None
    return None
