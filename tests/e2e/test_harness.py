"""Self-tests of the e2e harness: real ``zephyr-agent`` 1.2.2 and 1.0.1 deploy the sample app
to the RECORDING FAKE worker (``tests/e2e/recorder.py``), and the recorded wire traffic is
checked against the upload API (``zephyr_edge.http.ingest.upload``). ``WIRE.md`` documents what these tests observe.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from urllib.parse import quote

import jwt
import pytest

from tests.e2e.agent import (
    AGENT_GENERATES_MANIFEST,
    AGENT_VERSIONS,
    MANIFEST_FILENAME,
    UNICODE_JS,
    AgentInstallError,
    ControlPlaneStub,
    DeployError,
    application_uid,
    asset_hash,
    deploy,
    install_agents,
    make_app_dir,
    parse_git_remote,
    sample_app_files,
)
from tests.e2e.recorder import RecordingEdge, version_label

pytestmark = pytest.mark.e2e

SECRET = "e2e-worker-jwt-secret-0123456789abcdef"  # >= 32 bytes: no PyJWT key-length warning
UID = "e2e-app.test-repo.test-org"
FILE_DELAY_S = 0.2  # per file upload, so that concurrent uploads overlap visibly
BUILD_ID_DELAY_S = 0.8  # lets agent 1.0.1 load its hash list before it starts uploading


@pytest.fixture(scope="session")
def agents():
    return install_agents()


@pytest.fixture
async def edge():
    async with RecordingEdge(jwt_secret=SECRET, delays={"file": FILE_DELAY_S}) as e:
        yield e


@pytest.fixture
async def stub(edge):
    async with ControlPlaneStub(edge_url=edge.url, jwt_secret=SECRET) as s:
        yield s


def uploaded(edge: RecordingEdge) -> dict[str, object]:
    """filename -> the (last) file upload request for it."""
    return {r.q("filename"): r for r in edge.of_kind("file")}


def check_jwt(rec, uid: str) -> None:
    token = rec.headers.get("can_write_jwt")
    assert token, f"{rec.summary()} has no can_write_jwt header"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    assert claims["application_uid"] == uid
    assert claims["can_write"] is True


# -- a first deploy --------------------------------------------------------------------


@pytest.mark.parametrize("version", AGENT_VERSIONS)
async def test_first_deploy_wire_traffic(version, agents, edge, stub, tmp_path):
    app = make_app_dir(tmp_path / "app", sample_app_files(version))
    assert app.application_uid == UID == application_uid("e2e-app", "https://github.com/test-org/test-repo.git")

    res = await deploy(version, app, stub.url, agents=agents)

    # control plane: config for the derived uid, one build id, build stats; nothing unknown
    assert [r.path for r in stub.of_path("/application-config/")] == [f"/application-config/{UID}"]
    assert stub.build_ids == ["1"]
    assert len(stub.of_path("/build-stats")) == 1
    assert stub.unknown == [], [(r.method, r.path) for r in stub.unknown]
    assert all(r.headers.get("authorization") == "Bearer e2e-secret-token" for r in stub.requests)
    # the only outside call (npm dist-tags) went to the loopback proxy address, refused
    assert all(r.headers.get("host", "").startswith("registry.npmjs.org") for r in stub.proxied)

    # hash list: one GET, by application_uid, without a token (agents 1.0/1.2)
    (hl,) = edge.of_kind("hash_list")
    assert hl.method == "GET" and hl.query == [("application_uid", UID)]
    assert "can_write_jwt" not in hl.headers

    # files: every file of the app (and the manifest) exactly once, hash rule of 4.1
    files = edge.of_kind("file")
    by_name = uploaded(edge)
    assert len(files) == len(by_name), "a file was uploaded twice"
    assert set(by_name) == set(app.files) | {MANIFEST_FILENAME}  # shipped by the app or generated
    for name, rec in by_name.items():
        assert rec.method == "POST" and rec.status == 200, rec.summary()
        assert rec.q("type") == "file"
        assert rec.q("hash") == asset_hash(name, rec.body)
        h = hashlib.sha256(rec.body or name.encode())
        h.update(name.encode())
        assert rec.q("hash") == h.hexdigest()
        if name in app.files:
            assert rec.body_sha256 == hashlib.sha256(app.files[name]).hexdigest()
        assert rec.headers["content-type"] == "application/octet-stream"
        assert rec.headers["x-file-size"] == str(rec.body_size)
        assert rec.headers["content-length"] == str(rec.body_size)
        check_jwt(rec, UID)
        assert rec.headers["can_write_jwt"] == stub.tokens[UID]
    assert by_name["empty.txt"].body_size == 0
    # the query carries the exact UTF-8 name; x-file-path does not (non-Latin-1 is lost)
    uni = by_name[UNICODE_JS]
    assert uni.raw_path.endswith("&filename=" + quote(UNICODE_JS, safe="*-._")), uni.raw_path
    assert dict(uni.raw_headers)[b"x-file-path"] != UNICODE_JS.encode("utf-8")
    manifest = json.loads(by_name[MANIFEST_FILENAME].body)
    assert manifest["dependencies"] == {} and manifest["version"] == "1.0.0"

    # concurrency: the agent runs 6 uploads at once (MAX_MATCH_SIZE in ze-upload-assets.js)
    assert edge.max_in_flight["file"] == 6

    # snapshot: one POST, sent while files are still uploading, with the full assets map
    (snap,) = edge.of_kind("snapshot")
    assert snap.method == "POST" and snap.status == 200
    assert snap.query == [("type", "snapshot"), ("skip_assets", "true")]
    assert snap.headers["content-type"] == "application/json; charset=utf-8"
    check_jwt(snap, UID)
    assert snap.started < max(r.finished for r in files), "snapshot was sent only after all files"
    body = snap.json()
    assert body["application_uid"] == UID
    assert body["snapshot_id"] == f"tester-1.{UID}"
    assert body["version"] == "1.0.0-tester.1"
    assert body["domain"] == edge.url
    assert body["type"] == "csr"
    assert body["uid"] == {"build": "1", "app_name": "e2e-app", "repo": "test-repo", "org": "test-org"}
    assert body["creator"] == {"name": "tester", "email": "tester@example.com"}
    assert body["plugin_version"] == version and body["builder"] == "custom"
    assert set(body["assets"]) == set(by_name)
    for key, asset in body["assets"].items():
        rec = by_name[key]
        assert asset == {
            "path": key,
            "extname": os.path.splitext(key)[1],
            "hash": rec.q("hash"),
            "size": rec.body_size,
        }

    # the version URL: the snapshot answer's urls.version, returned by uploadOutputToZephyr
    answer = json.loads(snap.answer)
    assert res.version_url == answer["urls"]["version"]
    assert version_label(body["snapshot_id"]) in res.version_url
    assert res.version_url in res.stdout
    stats = stub.of_path("/build-stats")[0].json()
    assert stats["edge"]["versionUrl"] == res.version_url
    assert stats["worker_version"] == edge.worker_version
    assert edge.of_kind("envs") == []  # neither agent publishes with type=envs


# -- redeploys: the hash list and the agent's local hash cache -------------------------


@pytest.mark.parametrize("version", AGENT_VERSIONS)
async def test_redeploy_uploads_only_changed_files(version, agents, edge, stub, tmp_path):
    """The hash-list answer (built from what the recorder stored) makes the agent skip known
    hashes; so does the agent's own 24 h hash cache in ``~/.zephyr`` (same HOME), which
    replaces the hash-list call. Agent 1.0.1 does not wait for either (see WIRE.md)."""
    app = make_app_dir(tmp_path / "app", sample_app_files(version))
    generated = {MANIFEST_FILENAME} if AGENT_GENERATES_MANIFEST[version] else set()
    full = set(app.files) | {MANIFEST_FILENAME}

    # A: first deploy, everything is new
    await deploy(version, app, stub.url, agents=agents, home=tmp_path / "home-a")
    assert set(uploaded(edge)) == full
    stored = set(edge.files)

    # B: fresh HOME, build id answered late so that even 1.0.1 has the hash list in time
    edge.clear()
    stub.delays["/build-id"] = BUILD_ID_DELAY_S
    app.write({"assets/main-3f2a1c.js": b"console.log('changed once');\n"})
    res_b = await deploy(version, app, stub.url, agents=agents, home=tmp_path / "home-b")
    (hl,) = edge.of_kind("hash_list")
    assert set(json.loads(hl.answer)["hashes"]) == stored
    assert set(uploaded(edge)) == {"assets/main-3f2a1c.js"} | generated
    (snap,) = edge.of_kind("snapshot")
    assert set(snap.json()["assets"]) == full
    assert snap.json()["snapshot_id"] == f"tester-2.{UID}"
    assert version_label(f"tester-2.{UID}") in res_b.version_url

    # C: fresh HOME, build id answered at once: 1.2.2 awaits the hash list, 1.0.1 reads it
    # without waiting (zephyr-engine/index.js upload_assets: `resolved_hash_list`) and
    # normally uploads everything again
    edge.clear()
    stub.delays.clear()
    app.write({"data/config.json": b'{"feature": false}'})
    await deploy(version, app, stub.url, agents=agents, home=tmp_path / "home-c")
    assert len(edge.of_kind("hash_list")) == 1
    names_c = set(uploaded(edge))
    if version == "1.0.1":
        assert {"data/config.json"} <= names_c <= full
    else:
        assert names_c == {"data/config.json"} | generated

    # D: the same HOME as B: the agent's hash cache (B's hash list + B's assets) replaces
    # the hash-list call; it does not know C's data/config.json, uploaded from another HOME
    edge.clear()
    stub.delays["/build-id"] = BUILD_ID_DELAY_S
    app.write({"assets/nested/deep/x.js": b"export const deep = 'changed twice';\n"})
    await deploy(version, app, stub.url, agents=agents, home=tmp_path / "home-b")
    assert edge.of_kind("hash_list") == []
    assert set(uploaded(edge)) == {"assets/nested/deep/x.js", "data/config.json"} | generated
    snap_d = edge.of_kind("snapshot")[0].json()
    assert set(snap_d["assets"]) == full
    for name in ("assets/nested/deep/x.js", "assets/main-3f2a1c.js", "data/config.json"):
        assert snap_d["assets"][name]["hash"] == asset_hash(name, app.files[name])


# -- error answers -------------------------------------------------------------------------

ERROR_CASES = [("file", 403, "Forbidden"), ("file", 501, "Not Implemented"),
               ("snapshot", 403, "Forbidden"), ("snapshot", 501, "Not Implemented")]  # fmt: skip


@pytest.mark.parametrize("kind,status,body", ERROR_CASES)
@pytest.mark.parametrize("version", AGENT_VERSIONS)
async def test_error_answers_fail_the_deploy(version, kind, status, body, agents, edge, stub, tmp_path):
    """403 / 501 on a write fails the deploy (ERR_FAILED_UPLOAD, ZE20017). 1.0.1 retries a
    POST on 5xx three times (axios-retry), 1.2.2 never retries a POST. WIRE.md has details."""
    edge.delays.clear()
    edge.fail(kind, status, body)
    app = make_app_dir(tmp_path / "app", sample_app_files(version))
    with pytest.raises(DeployError) as info:
        await deploy(version, app, stub.url, agents=agents)
    err = info.value.result.error
    assert err["code"] == "ZE20017", err
    assert err["template"]["type"] == kind
    cause = err["cause"]
    if version == "1.2.2":
        # http-request.js: 403 -> ERR_AUTH_FORBIDDEN_ERROR; body "Not Implemented" -> ERR_UNKNOWN
        assert cause["code"] == ("ZE10022" if status == 403 else "ZE00000"), cause
    else:
        # axios rejects non-2xx inside fetch-with-retries.js -> ERR_HTTP_ERROR with the status
        assert cause["code"] == "ZE40035" and cause["template"]["status"] == status, cause
    failed = [r for r in edge.of_kind(kind) if r.status == status]
    attempts = max(sum(1 for r in failed if r.raw_path == f.raw_path) for f in failed)
    assert attempts == (4 if (version == "1.0.1" and status >= 500) else 1)


# -- harness plumbing ----------------------------------------------------------------------


async def test_deploy_timeout_kills_the_agent(agents, edge, stub, tmp_path):
    edge.delays["file"] = 60.0
    app = make_app_dir(tmp_path / "app", {"index.html": b"<p>slow</p>"})
    started = time.monotonic()
    res = await deploy("1.2.2", app, stub.url, agents=agents, timeout_s=3, check=False)
    assert res.timed_out and not res.ok and res.returncode is None
    assert time.monotonic() - started < 15
    with pytest.raises(ProcessLookupError):
        os.kill(res.pid, 0)


async def test_stub_answers_unknown_requests_404(stub):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stub.url}/v2/user/me") as resp:
            assert resp.status == 404
    assert [(r.method, r.path) for r in stub.unknown] == [("GET", "/v2/user/me")]


def test_install_agents_reuses_complete_installs(agents):
    started = time.monotonic()
    again = install_agents()
    assert again == agents and time.monotonic() - started < 5
    for version, node_modules in agents.items():
        pkg = json.loads((node_modules / "zephyr-agent" / "package.json").read_text())
        assert pkg["version"] == version


def test_install_agents_reports_npm_failures(tmp_path):
    fake = tmp_path / "npm"
    fake.write_text("#!/bin/sh\necho 'npm ERR! 404 No match found for version 9.9.9' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(AgentInstallError, match=r"(?s)exit 1.*No match found for version 9\.9\.9"):
        install_agents(tmp_path / "cache", versions=("9.9.9",), npm=str(fake))
    assert not (tmp_path / "cache" / "zephyr-agent-9.9.9").exists()

    fake.write_text("#!/bin/sh\nsleep 30\n")
    started = time.monotonic()
    with pytest.raises(AgentInstallError, match="exceeded 1s"):
        install_agents(tmp_path / "cache", versions=("9.9.9",), npm=str(fake), timeout_s=1)
    assert time.monotonic() - started < 10


REMOTES = [
    "https://github.com/test-org/test-repo.git",
    "git@github.com:Test-Org/Test.Repo.git",
    "ssh://git@github.com/test-org/test-repo",
    "https://gitlab.com/group/sub/project.git",
    "git@bitbucket.org:team/repo.git",
    "https://git.example.co.uk/team/repo.git",
]
NAMES = ["e2e-app", "@scope/My_App", "dotted.name"]


@pytest.mark.parametrize("version", AGENT_VERSIONS)
def test_application_uid_matches_the_agent(version, agents):
    """The Python helpers give what the agent's own code gives for these remotes/names."""
    nm = agents[version]
    script = """
const path = require('path');
const nm = process.argv[1];
const { createApplicationUid } = require(path.join(nm, 'zephyr-edge-contract'));
const { getGitProviderInfo } = require(path.join(nm, 'zephyr-agent/dist/lib/build-context/git-provider-utils.js'));
const [remotes, names] = JSON.parse(process.argv[2]);
const out = [];
for (const r of remotes) { const g = getGitProviderInfo(r);
  for (const n of names) out.push([r, n, g.owner, g.project, createApplicationUid({ org: g.owner, project: g.project, name: n })]); }
console.log(JSON.stringify(out));
"""
    proc = subprocess.run(
        ["node", "-e", script, str(nm), json.dumps([REMOTES, NAMES])],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    for remote, name, org, project, uid in json.loads(proc.stdout):
        assert parse_git_remote(remote) == (org, project), remote
        assert application_uid(name, remote) == uid, (remote, name)
