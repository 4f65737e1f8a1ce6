"""Snapshot JSON validation (uploads), publish payloads (``type=envs``), live payloads (the
records of published hosts)."""

from __future__ import annotations

import json

import pytest

from zephyr_edge.errors import BadRequest
from zephyr_edge.domain.snapshot import (
    Asset,
    EnvsPayload,
    InvalidLivePayload,
    Snapshot,
    load_live_payload,
    parse_envs_payload,
    parse_snapshot,
)

UID = "app.repo.org"
SID = "tester-12.app.repo.org"
H1 = "a" * 64
H2 = "0123456789abcdef" * 4


def snapshot_doc(**changes):
    """A snapshot as zephyr-agent sends it (trimmed), with top-level ``changes``."""
    doc = {
        "application_uid": UID,
        "snapshot_id": SID,
        "version": "tester-12",
        "domain": "ze.example.com",
        "target": "web",
        "type": "csr",
        "entrypoint": "index.html",
        "uid": {"build": "12", "app_name": "app", "repo": "repo", "org": "org"},
        "git": {"branch": "main", "commit": "abc"},
        "creator": {"name": "T", "email": "t@example.com"},
        "createdAt": 1718000000000,
        "mfConfig": {"name": "app", "remotes": {"x": "y"}},
        "assets": {
            "index.html": {"path": "index.html", "extname": ".html", "hash": H1, "size": 120},
            "assets/main.js": {"path": "assets/main.js", "extname": ".js", "hash": H2, "size": 0},
        },
    }
    doc.update(changes)
    return doc


def encode(doc) -> bytes:
    return json.dumps(doc).encode()


def with_asset(key, **entry):
    base = {"path": key, "extname": ".js", "hash": H1, "size": 1}
    base.update(entry)
    return snapshot_doc(assets={key: {k: v for k, v in base.items() if v is not OMIT}})


OMIT = object()


def reject(body: bytes, token_uid: str | None = UID) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_snapshot(body, token_uid)
    return info.value


# --- parse_snapshot: accepted -------------------------------------------------------------


def test_parse_snapshot_exposes_fields():
    snap = parse_snapshot(encode(snapshot_doc()), UID)
    assert snap.application_uid == UID
    assert snap.snapshot_id == SID
    assert snap.created_at == 1718000000000
    assert snap.assets == {
        "index.html": Asset("index.html", ".html", H1, 120),
        "assets/main.js": Asset("assets/main.js", ".js", H2, 0),
    }
    assert snap.hashes == frozenset({H1, H2})


def test_parse_snapshot_keeps_every_field_as_sent():
    doc = snapshot_doc(futureField={"nested": [1, 2.5, None, True]}, name="ünïcode")
    snap = parse_snapshot(encode(doc), UID)
    assert snap.raw == doc
    assert json.loads(snap.to_json()) == doc
    assert list(json.loads(snap.to_json())) == list(doc)  # key order kept
    assert "ünïcode".encode() in snap.to_json()  # UTF-8, not \u escapes


def test_parse_snapshot_without_token_uid_skips_the_comparison():
    assert parse_snapshot(encode(snapshot_doc()), None).application_uid == UID


def test_parse_snapshot_accepts_bom_and_agent_variants():
    # zephyr-agent replaces characters outside [a-zA-Z0-9_-] by "_" ("@scope/my-app" -> "_scope_my-app");
    # agent 1.0 joins user and build id with "_", later ones with "-"
    uid = "_scope_my-app.my_repo.org-1"
    doc = snapshot_doc(application_uid=uid, snapshot_id="user_7." + uid)
    snap = parse_snapshot(b"\xef\xbb\xbf" + encode(doc), uid)
    assert (snap.application_uid, snap.snapshot_id) == (uid, "user_7." + uid)


def test_parse_snapshot_allows_empty_assets_and_missing_extname_and_created_at():
    snap = parse_snapshot(encode(snapshot_doc(assets={}, createdAt=None)), UID)
    assert snap.assets == {} and snap.created_at is None
    snap = parse_snapshot(encode(with_asset("assets/a.MJS", extname=OMIT)), UID)
    assert snap.assets["assets/a.MJS"].extname == ".mjs"


@pytest.mark.parametrize("created", ["2024-01-01", 1.5, True])
def test_non_integer_created_at_is_tolerated(created):
    assert parse_snapshot(encode(snapshot_doc(createdAt=created)), UID).created_at is None


def test_base_path_prefixed_keys_are_accepted():
    snap = parse_snapshot(encode(with_asset("app/assets/main.js")), UID)
    assert "app/assets/main.js" in snap.assets


def test_snapshot_is_frozen_and_comparable():
    a = parse_snapshot(encode(snapshot_doc()), UID)
    b = parse_snapshot(encode(snapshot_doc()), UID)
    assert a == b
    with pytest.raises(AttributeError):
        a.snapshot_id = "x"  # type: ignore[misc]


# --- parse_snapshot: every reject ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "body: not UTF-8 text"),
        (b"", "body: invalid JSON: Expecting value (line 1, column 1)"),
        (b"{", "body: invalid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
        (b"[]", "body: expected a JSON object"),
        (b"null", "body: expected a JSON object"),
        (b'"x"', "body: expected a JSON object"),
        (b'{"a": NaN}', "body: invalid JSON: NaN is not valid JSON"),
        (b'{"a": Infinity}', "body: invalid JSON: Infinity is not valid JSON"),
        # hostile input: each of these once escaped as a 500
        (b'{"a": "\\ud800"}', "body: invalid JSON: a \\u escape encodes a lone UTF-16 surrogate, not a character"),
        (b'{"a": ["x", {"b": "\\udfff\\ud800"}]}',
         "body: invalid JSON: a \\u escape encodes a lone UTF-16 surrogate, not a character"),
        (b'{"a": 1e999}', "body: invalid JSON: the number 1e999 is out of range"),
        (b'{"a": -1e400}', "body: invalid JSON: the number -1e400 is out of range"),
        (b'{"a": ' + b"9" * 5000 + b"}", "body: invalid JSON: a number of 5000 digits (at most 4300)"),
    ],
)
def test_reject_body(body, message):
    exc = reject(body)
    assert str(exc) == message
    assert exc.field == "body"
    assert exc.status == 400


def test_lone_surrogates_anywhere_are_refused_pairs_are_characters():
    for where in (
        snapshot_doc(version="\ud800"),
        snapshot_doc(git={"branch": "\udc00"}),
        snapshot_doc(**{"\ud800key": 1}),
        with_asset("a\ud800.js", path="a\ud800.js", extname=".js", hash=H1, size=1),
    ):
        body = json.dumps(where).encode()  # ensure_ascii: the surrogate travels as an escape
        assert b"\\ud" in body
        exc = reject(body)
        assert exc.field == "body" and "lone UTF-16 surrogate" in str(exc), where
    # an escaped pair is one character and is kept as sent
    snap = parse_snapshot(json.dumps(snapshot_doc(version="v\U0001F600")).encode(), UID)
    assert snap.raw["version"] == "v\U0001F600"
    assert "\U0001F600".encode() in snap.to_json()


def test_reject_deeply_nested_json():
    exc = reject(b"[" * 100_000 + b"]" * 100_000)
    assert exc.field == "body" and str(exc).startswith("body: invalid JSON")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (OMIT, "application_uid: expected a string"),
        (7, "application_uid: expected a string"),
        ("App.repo.org", 'application_uid: expected dot-separated labels of [a-z0-9_-] (app.repo.org), got "App.repo.org"'),
        ("app..org", 'application_uid: expected dot-separated labels of [a-z0-9_-] (app.repo.org), got "app..org"'),
        ("", 'application_uid: expected dot-separated labels of [a-z0-9_-] (app.repo.org), got ""'),
        ("app.repo.org.", 'application_uid: expected dot-separated labels of [a-z0-9_-] (app.repo.org), got "app.repo.org."'),
        ("app/x.repo.org", 'application_uid: expected dot-separated labels of [a-z0-9_-] (app.repo.org), got "app/x.repo.org"'),
    ],
)
def test_reject_application_uid(value, message):
    doc = snapshot_doc()
    if value is OMIT:
        del doc["application_uid"]
    else:
        doc["application_uid"] = value
    exc = reject(encode(doc), None)
    assert str(exc) == message
    assert exc.field == "application_uid"


def test_reject_application_uid_too_long():
    uid = "a" * 600
    exc = reject(encode(snapshot_doc(application_uid=uid, snapshot_id="u." + uid)), None)
    assert exc.field == "application_uid"
    assert str(exc).endswith('got "' + "a" * 76 + "...")  # quoted value truncated to 80 chars


def test_reject_application_uid_of_another_token():
    exc = reject(encode(snapshot_doc()), "other.repo.org")
    assert str(exc) == 'application_uid: "app.repo.org" does not match the write token\'s application "other.repo.org"'
    assert exc.field == "application_uid"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (OMIT, "snapshot_id: expected a string"),
        (12, "snapshot_id: expected a string"),
        ("tester-12.other.repo.org", 'snapshot_id: expected <version>.app.repo.org, got "tester-12.other.repo.org"'),
        (".app.repo.org", 'snapshot_id: expected <version>.app.repo.org, got ".app.repo.org"'),
        ("app.repo.org", 'snapshot_id: expected <version>.app.repo.org, got "app.repo.org"'),
        ("tester-12app.repo.org", 'snapshot_id: expected <version>.app.repo.org, got "tester-12app.repo.org"'),
        ("te ster.app.repo.org", "snapshot_id: expected letters, digits, '_', '-' and '.' only, got \"te ster.app.repo.org\""),
        ("a/b.app.repo.org", "snapshot_id: expected letters, digits, '_', '-' and '.' only, got \"a/b.app.repo.org\""),
        ("x" * 600 + ".app.repo.org", "snapshot_id: expected letters, digits, '_', '-' and '.' only, got \"" + "x" * 76 + "..."),
    ],
)
def test_reject_snapshot_id(value, message):
    doc = snapshot_doc()
    if value is OMIT:
        del doc["snapshot_id"]
    else:
        doc["snapshot_id"] = value
    exc = reject(encode(doc))
    assert str(exc) == message
    assert exc.field == "snapshot_id"


@pytest.mark.parametrize("value", [OMIT, None, [], "x", 3])
def test_reject_assets_not_an_object(value):
    doc = snapshot_doc()
    if value is OMIT:
        del doc["assets"]
    else:
        doc["assets"] = value
    exc = reject(encode(doc))
    assert str(exc) == "assets: expected a JSON object mapping paths to assets"
    assert exc.field == "assets"


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "expected a non-empty string"),
        ("/abs/main.js", "must be a relative path (no leading '/')"),
        ("..", "must not contain a '..' segment"),
        ("../main.js", "must not contain a '..' segment"),
        ("a/../../main.js", "must not contain a '..' segment"),
        ("a\x00.js", "must not contain NUL or other control characters"),
        ("a\r\n.js", "must not contain NUL or other control characters"),
        ("..\\main.js", "must not contain a backslash"),
        ("a\\b.js", "must not contain a backslash"),
    ],
)
def test_reject_asset_key(key, problem):
    exc = reject(encode(with_asset(key)))
    field = "assets[" + json.dumps(key) + "]"
    assert str(exc) == f"{field}: {problem}"
    assert exc.field == field


def test_reject_asset_entry_not_an_object():
    exc = reject(encode(snapshot_doc(assets={"a.js": "deadbeef"})))
    assert str(exc) == 'assets["a.js"]: expected a JSON object'
    assert exc.field == 'assets["a.js"]'


@pytest.mark.parametrize(
    ("path", "shown"),
    [("b.js", '"b.js"'), (OMIT, "None"), ("A.js", '"A.js"'), ("/a.js", '"/a.js"'), (1, "1")],
)
def test_reject_asset_path_not_equal_to_key(path, shown):
    exc = reject(encode(with_asset("a.js", path=path)))
    assert str(exc) == f'assets["a.js"].path: expected the asset\'s key "a.js", got {shown}'
    assert exc.field == 'assets["a.js"].path'


def test_reject_asset_extname_not_a_string():
    exc = reject(encode(with_asset("a.js", extname=3)))
    assert str(exc) == 'assets["a.js"].extname: expected a string'
    assert exc.field == 'assets["a.js"].extname'


@pytest.mark.parametrize("digest", [OMIT, None, H1.upper(), H1[:-1], H1 + "a", "z" * 64, 5])
def test_reject_asset_hash(digest):
    exc = reject(encode(with_asset("a/b.js", hash=digest)))
    assert str(exc) == 'assets["a/b.js"].hash: expected 64 lower-case hex characters'
    assert exc.field == 'assets["a/b.js"].hash'


@pytest.mark.parametrize(("size", "shown"), [(-1, "-1"), (1.5, "1.5"), (1.0, "1.0"), ("1", '"1"'), (True, "True"), (False, "False"), (OMIT, "None"), (None, "None")])
def test_reject_asset_size(size, shown):
    exc = reject(encode(with_asset("a.js", size=size)))
    assert str(exc) == f'assets["a.js"].size: expected a non-negative integer, got {shown}'
    assert exc.field == 'assets["a.js"].size'


def test_reject_truncates_very_long_keys_in_the_field_path():
    key = "d/" * 150 + "x.js"
    exc = reject(encode(with_asset(key, hash="x")))
    assert exc.field == "assets[" + json.dumps(key)[:197] + "...].hash"
    assert str(exc) == f"{exc.field}: expected 64 lower-case hex characters"


def test_reject_names_non_ascii_keys_readably():
    exc = reject(encode(with_asset("é/ü.js", hash="x")))
    assert str(exc) == 'assets["é/ü.js"].hash: expected 64 lower-case hex characters'


# --- load_live_payload ----------------------------------------------------------------------


def test_live_payload_is_the_snapshot_json():
    stored = parse_snapshot(encode(snapshot_doc()), UID).to_json()
    live = load_live_payload(stored)
    assert live == parse_snapshot(stored, UID)
    assert live.skipped_assets == ()


def test_live_payload_of_a_hand_copied_pretty_printed_snapshot():
    raw = b"\xef\xbb\xbf\n" + json.dumps(snapshot_doc(), indent=2).encode() + b"\n"
    assert load_live_payload(raw).assets["assets/main.js"].hash == H2


def test_live_payload_tolerates_missing_or_odd_ids():
    doc = snapshot_doc()
    del doc["application_uid"]
    doc["snapshot_id"] = 5
    live = load_live_payload(encode(doc))
    assert (live.application_uid, live.snapshot_id) == ("", "")
    assert set(live.assets) == {"index.html", "assets/main.js"}


def test_live_payload_skips_unsafe_or_malformed_assets():
    doc = snapshot_doc()
    doc["assets"]["../etc/passwd"] = {"path": "../etc/passwd", "extname": "", "hash": H1, "size": 1}
    doc["assets"]["bad.js"] = {"path": "bad.js", "extname": ".js", "hash": "../../x", "size": 1}
    live = load_live_payload(encode(doc))
    assert set(live.assets) == {"index.html", "assets/main.js"}
    assert live.skipped_assets == (
        'assets["../etc/passwd"]: must not contain a \'..\' segment',
        'assets["bad.js"].hash: expected 64 lower-case hex characters',
    )
    assert live.raw == doc  # what was found is kept untouched


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "live payload: invalid JSON: Expecting value (line 1, column 1)"),
        (b"\xff", "live payload: not UTF-8 text"),
        (b"[1]", "live payload: expected a JSON object"),
        (b'{"snapshot_id": "x"}', 'live payload: no "assets" object; expected a snapshot JSON'),
        (b'{"assets": []}', 'live payload: no "assets" object; expected a snapshot JSON'),
    ],
)
def test_live_payload_garbage(raw, message):
    with pytest.raises(InvalidLivePayload) as info:
        load_live_payload(raw)
    assert str(info.value) == message
    assert info.value.code == "invalid_live_payload"
    assert not isinstance(info.value, BadRequest)  # a stored-data problem, not the client's


# --- parse_envs_payload ---------------------------------------------------------------------


def envs_doc(**changes):
    doc = {
        "app_version": {"application_uid": UID, "snapshot_id": SID},
        "urls": ["https://Tag-Latest-ze.example.com", "https://ze.example.com:8443/some/path?q=1"],
        "url_ids": ["env-prod-ze.example.com"],
        "jwt": "secret.token.value",
    }
    doc.update(changes)
    return doc


def test_envs_payload_hosts():
    payload = parse_envs_payload(encode(envs_doc()), UID)
    assert payload == EnvsPayload(UID, SID, ("tag-latest-ze.example.com", "ze.example.com", "env-prod-ze.example.com"))
    assert "secret" not in repr(payload)


@pytest.mark.parametrize(
    ("urls", "url_ids", "hosts"),
    [
        (["http://a.example.com", "https://A.example.com/"], [], ("a.example.com",)),
        (["a.example.com/path"], ["https://b.example.com"], ("a.example.com", "b.example.com")),
        (["https://user:pw@a.example.com:1"], ["[::1]:80"], ("a.example.com", "::1")),
        ([], [], ()),
    ],
)
def test_envs_payload_host_forms(urls, url_ids, hosts):
    assert parse_envs_payload(encode(envs_doc(urls=urls, url_ids=url_ids))).hosts == hosts


def test_envs_payload_missing_lists_are_empty():
    doc = envs_doc()
    del doc["urls"], doc["url_ids"]
    assert parse_envs_payload(encode(doc), UID).hosts == ()


def test_envs_payload_application_uid_of_another_token():
    with pytest.raises(BadRequest) as info:
        parse_envs_payload(encode(envs_doc()), "other.repo.org")
    assert info.value.field == "app_version.application_uid"
    assert "does not match the write token's application" in str(info.value)


@pytest.mark.parametrize(
    ("doc", "field", "message"),
    [
        (envs_doc(app_version=None), "app_version", "app_version: expected a JSON object with application_uid and snapshot_id"),
        (envs_doc(app_version=[]), "app_version", "app_version: expected a JSON object with application_uid and snapshot_id"),
        (envs_doc(app_version={"snapshot_id": SID}), "app_version.application_uid", "app_version.application_uid: expected a string"),
        (envs_doc(app_version={"application_uid": UID}), "app_version.snapshot_id", "app_version.snapshot_id: expected a string"),
        (envs_doc(app_version={"application_uid": UID, "snapshot_id": "x.other.org"}), "app_version.snapshot_id",
         'app_version.snapshot_id: expected <version>.app.repo.org, got "x.other.org"'),
        (envs_doc(urls="https://a.example.com"), "urls", "urls: expected a list of strings"),
        (envs_doc(url_ids={"a": 1}), "url_ids", "url_ids: expected a list of strings"),
        (envs_doc(urls=["https://a.example.com", 3]), "urls[1]", "urls[1]: expected a non-empty string"),
        (envs_doc(urls=[" "]), "urls[0]", "urls[0]: expected a non-empty string"),
        (envs_doc(urls=["https://"]), "urls[0]", 'urls[0]: expected a URL or host name with a valid host, got "https://"'),
        (envs_doc(urls=["https://bad host/"]), "urls[0]", 'urls[0]: expected a URL or host name with a valid host, got "https://bad host/"'),
        (envs_doc(url_ids=["ok.example.com", "a..b"]), "url_ids[1]", 'url_ids[1]: expected a URL or host name with a valid host, got "a..b"'),
        # an unclosed IPv6 bracket made urlsplit raise ValueError (a 500)
        (envs_doc(urls=["https://[x"]), "urls[0]", 'urls[0]: expected a URL or host name with a valid host, got "https://[x"'),
        (envs_doc(url_ids=["["]), "url_ids[0]", 'url_ids[0]: expected a URL or host name with a valid host, got "["'),
        (envs_doc(urls=["http://[::1/x"]), "urls[0]", 'urls[0]: expected a URL or host name with a valid host, got "http://[::1/x"'),
    ],
)
def test_envs_payload_rejects(doc, field, message):
    with pytest.raises(BadRequest) as info:
        parse_envs_payload(encode(doc), UID)
    assert str(info.value) == message
    assert info.value.field == field


@pytest.mark.parametrize(("body", "message"), [(b"nope", "body: invalid JSON"), (b"[]", "body: expected a JSON object")])
def test_envs_payload_rejects_body(body, message):
    with pytest.raises(BadRequest) as info:
        parse_envs_payload(body)
    assert str(info.value).startswith(message)
    assert info.value.field == "body"
    assert "secret" not in str(info.value)


def test_snapshot_model_is_usable_directly():
    snap = Snapshot(UID, SID, {"a.js": Asset("a.js", ".js", H1, 1)}, raw={"application_uid": UID})
    assert snap.hashes == {H1}
    assert snap.to_json() == b'{"application_uid":"app.repo.org"}'
