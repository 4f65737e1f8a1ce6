"""Hostnames: Zephyr's label rule, Host normalisation, KV keys and hash tags."""

from __future__ import annotations

import hashlib

import pytest

from zephyr_edge.domain import hostnames
from zephyr_edge.settings.fields import WorkerConfig
from zephyr_edge.errors import ConfigError

# (snapshot_id, label): expected labels computed outside Python with coreutils:
#   slug=$(printf %s "$id" | tr . -); echo "${slug:0:49}-$(printf %s "$slug" | sha256sum | cut -c1-9)"
KNOWN_LABELS = [
    ("tester-12.app.repo.org", "tester-12-app-repo-org-49e372c95"),
    ("Tester_7.app.repo.org", "Tester_7-app-repo-org-49a4cdaf4"),
    # slug of exactly 49 characters: kept whole
    ("u-1.abcdefghij.klmnopqrstuvwxyz.abcdefghijklmnopq",
     "u-1-abcdefghij-klmnopqrstuvwxyz-abcdefghijklmnopq-8d0652680"),
    # 50 and 52 characters: cut to 49, the hash (of the whole slug) tells them apart
    ("u-1.abcdefghij.klmnopqrstuvwxyz.abcdefghijklmnopqr",
     "u-1-abcdefghij-klmnopqrstuvwxyz-abcdefghijklmnopq-7d2505cda"),
    ("u-1.abcdefghij.klmnopqrstuvwxyz.abcdefghijklmnopqrst",
     "u-1-abcdefghij-klmnopqrstuvwxyz-abcdefghijklmnopq-cdf4cb83f"),
    ("zackarychapple-1234.my-really-long-application-name.some-repository.example-org",
     "zackarychapple-1234-my-really-long-application-na-5f94ca357"),
]


@pytest.mark.parametrize(("snapshot_id", "label"), KNOWN_LABELS)
def test_version_label_known_pairs(snapshot_id, label):
    assert hostnames.version_label(snapshot_id) == label


@pytest.mark.parametrize(("snapshot_id", "label"), KNOWN_LABELS)
def test_version_label_follows_the_rule_step_by_step(snapshot_id, label):
    slug = snapshot_id.replace(".", "-")
    assert label == slug[:49] + "-" + hashlib.sha256(slug.encode()).hexdigest()[:9]
    assert len(label) <= 59


def test_version_label_fits_a_dns_label():
    label = hostnames.version_label("x" * 300 + ".app.repo.org")
    assert len(label) == 49 + 1 + 9 <= hostnames.MAX_LABEL_CHARS


@pytest.mark.parametrize(
    ("delimiter", "expected"),
    [
        ("-", "tester-12-app-repo-org-49e372c95-ze.example.com"),
        (".", "tester-12-app-repo-org-49e372c95.ze.example.com"),
        ("_", "tester-12-app-repo-org-49e372c95_ze.example.com"),
    ],
)
def test_version_host_joins_with_the_delimiter(delimiter, expected):
    assert hostnames.version_host("tester-12.app.repo.org", "ze.example.com", delimiter) == expected


def test_version_host_normalises_edge_host_and_lower_cases():
    host = hostnames.version_host("Tester_7.app.repo.org", "ZE.Example.com:8443", "-")
    assert host == "tester_7-app-repo-org-49a4cdaf4-ze.example.com"


def test_version_host_rejects_unknown_delimiter():
    with pytest.raises(ValueError, match="unknown delimiter"):
        hostnames.version_host("tester-12.app.repo.org", "ze.example.com", "+")


def test_version_host_rejects_invalid_edge_host():
    with pytest.raises(ValueError, match="invalid edge host"):
        hostnames.version_host("tester-12.app.repo.org", "bad host!", "-")


def test_label_host_rejects_a_label_that_is_no_host_label():
    with pytest.raises(ValueError, match="not a valid host name"):
        hostnames.label_host("a/b", "ze.example.com", ".")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ze.example.com", "ze.example.com"),
        ("ZE.Example.COM", "ze.example.com"),
        ("ze.example.com:8080", "ze.example.com"),
        ("ze.example.com:", "ze.example.com"),
        ("ze.example.com.", "ze.example.com"),
        ("ze.example.com.:443", "ze.example.com"),
        ("  ze.example.com  ", "ze.example.com"),
        ("localhost", "localhost"),
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::1]:8080", "::1"),
        ("[2001:DB8:0:0::1]:443", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("a_b-c.example.com", "a_b-c.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_normalize_host(raw, expected):
    assert hostnames.normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None, "", "   ", "ze.example.com:80a", "[::1", "[::1]x", "[::1]:8a", "[nothost]",
        "a..b", ".example.com", "exa mple.com", "user@example.com", "a/b", "ex*ample.com",
        "a" * 64 + ".com", ".".join(["abcdefghi"] * 26), "1:2:3", "x:1:2",
    ],
)
def test_normalize_host_rejects(raw):
    assert hostnames.normalize_host(raw) is None


def test_normalize_host_accepts_longest_label_and_name():
    assert hostnames.normalize_host("a" * 63 + ".com") == "a" * 63 + ".com"
    name = ".".join(["a" * 62] * 4) + ".b"  # 4*63 + 1 = 253 characters
    assert len(name) == 253 and hostnames.normalize_host(name) == name


def test_kv_keys():
    assert hostnames.envs_key("{ze-k8s-worker}:envs:", "a.example.com") == "{ze-k8s-worker}:envs:a.example.com"
    assert (
        hostnames.snapshots_key("{ze-k8s-worker}:snapshots:", "u-1.app.repo.org")
        == "{ze-k8s-worker}:snapshots:u-1.app.repo.org"
    )


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("{ze-k8s-worker}:envs:", "{ze-k8s-worker}"),
        ("zephyr:{t}:envs:", "{t}"),
        ("{a}{b}", "{a}"),
        ("{{a}}", "{{a}"),  # Redis: first "{" to the first "}" after it
        ("plain:envs:", None),
        ("{}:envs:", None),  # empty tag: Redis hashes the whole key
        ("{}{a}", None),
        ("{open:envs:", None),
        ("}{", None),
    ],
)
def test_hash_tag(key, tag):
    assert hostnames.hash_tag(key) == tag


def test_prefix_problems_none_for_defaults():
    cfg = WorkerConfig(jwt_secret="s")
    assert hostnames.prefix_problems(cfg.redis_prefix_envs, cfg.redis_prefix_snapshots) == []


def test_prefix_problems_names_the_untagged_prefix():
    problems = hostnames.prefix_problems("envs:", "{t}:snapshots:")
    assert problems == [
        "ZE_WORKER_REDIS_PREFIX_ENVS: 'envs:' has no Redis Cluster hash tag; "
        "expected a non-empty {...} part such as '{ze-k8s-worker}:envs:'"
    ]
    problems = hostnames.prefix_problems("{t}:envs:", "{}:snapshots:")
    assert len(problems) == 1 and problems[0].startswith("ZE_WORKER_REDIS_PREFIX_SNAPSHOTS: '{}:snapshots:' has no")


def test_prefix_problems_both_untagged():
    assert len(hostnames.prefix_problems("envs:", "snapshots:")) == 2


def test_prefix_problems_different_tags():
    assert hostnames.prefix_problems("{a}:envs:", "{b}:snapshots:") == [
        "ZE_WORKER_REDIS_PREFIX_ENVS and ZE_WORKER_REDIS_PREFIX_SNAPSHOTS must carry the same "
        "hash tag, got {a} and {b}"
    ]


def test_prefix_problems_identical_prefixes():
    problems = hostnames.prefix_problems("{a}:x:", "{a}:x:")
    assert problems == [
        "ZE_WORKER_REDIS_PREFIX_ENVS and ZE_WORKER_REDIS_PREFIX_SNAPSHOTS must differ, both are '{a}:x:'"
    ]


def test_configured_hash_tag():
    assert hostnames.configured_hash_tag(WorkerConfig(jwt_secret="s")) == "{ze-k8s-worker}"
    cfg = WorkerConfig(jwt_secret="s", redis_prefix_envs="p:{x}:e:", redis_prefix_snapshots="p:{x}:s:")
    assert hostnames.configured_hash_tag(cfg) == "{x}"


def test_configured_hash_tag_raises_config_error_listing_problems():
    cfg = WorkerConfig(jwt_secret="s", redis_prefix_envs="{a}:envs:", redis_prefix_snapshots="{b}:snap:")
    with pytest.raises(ConfigError) as info:
        hostnames.configured_hash_tag(cfg)
    assert info.value.problems == hostnames.prefix_problems("{a}:envs:", "{b}:snap:")
    assert "same hash tag" in str(info.value)


def test_tagged_key():
    uid = "app.repo.org"
    assert hostnames.tagged_key("{ze-k8s-worker}:envs:", "hashes", uid) == "{ze-k8s-worker}:hashes:app.repo.org"
    assert hostnames.tagged_key("ns:{x}:envs:", "outbox") == "{x}:outbox"
    key = hostnames.tagged_key("{ze-k8s-worker}:snapshots:", "hashes", uid)
    assert hostnames.hash_tag(key) == hostnames.hash_tag("{ze-k8s-worker}:envs:")


@pytest.mark.parametrize(
    ("prefix", "parts", "message"),
    [
        ("envs:", ("hashes",), "no Redis Cluster hash tag"),
        ("{t}:envs:", (), "non-empty strings"),
        ("{t}:envs:", ("hashes", ""), "non-empty strings"),
        ("{t}:envs:", ("hashes", 3), "non-empty strings"),
    ],
)
def test_tagged_key_rejects(prefix, parts, message):
    with pytest.raises(ValueError, match=message):
        hostnames.tagged_key(prefix, *parts)


@pytest.mark.parametrize("snapshot_id", ["tester-9.web.repo.org", "u_1-22.a-b.c", "x" * 80 + ".web.repo.org"])
@pytest.mark.parametrize("delimiter", hostnames.DELIMITERS)
def test_version_hostnames_are_recognised_before_their_snapshot_exists(snapshot_id, delimiter):
    label = hostnames.version_label(snapshot_id).lower()
    for host in (hostnames.version_host(snapshot_id, "ze.example.com", delimiter), f"{label}.localhost"):
        assert hostnames.claimed_version_label(host) == label
        assert hostnames.version_host_conflict(host, snapshot_id, None) is None  # its own snapshot
        problem = hostnames.version_host_conflict(host, "tester-1.evil.attacker.org", None)
        assert problem and host in problem and "version hostname" in problem


@pytest.mark.parametrize("host", [
    "web-latest-ze.example.com", "latest.localhost", "app.example.com", "staging-web-repo-org-ze.example.com",
    "tester-9-web-repo-org-a8ad2e766",  # a label alone is no host
    "tester-9-web-repo-org-a8ad2e766-",
    "a.tester-9-web-repo-org-a8ad2e766-ze.example.com",  # not the leading label
    "web-0123abcd-ze.example.com", "web-0123abcdef-ze.example.com",  # 8 and 10 hex characters
])
def test_other_hosts_are_not_version_hostnames(host):
    assert hostnames.claimed_version_label(host) is None
    assert hostnames.version_host_conflict(host, "tester-1.web.repo.org", None, "web.repo.org") is None


def test_the_unverifiable_shape_is_reserved_except_for_its_own_application():
    upper = "Tester-9.web.repo.org"  # its label does not verify against the lower-cased host
    host = hostnames.version_host(upper, "ze.example.com", "-")
    assert hostnames.claimed_version_label(host) is None
    problem = hostnames.version_host_conflict(host, "tester-1.evil.attacker.org", None, "evil.attacker.org")
    assert problem and "reserved for snapshot uploads" in problem
    assert hostnames.version_host_conflict(host, "tester-1.web.repo.org", None, "web.repo.org") is None
    # a name that only looks like a label is refused too, with a message that says why
    problem = hostnames.version_host_conflict("shop-0123abcde.com", "tester-1.web.repo.org", None, "web.repo.org")
    assert problem and "shape of a version label" in problem
    # once it serves its snapshot, the application itself cannot move it either
    assert hostnames.version_host_conflict(host, "tester-1.web.repo.org", upper, "web.repo.org")
    assert hostnames.version_host_conflict(host, upper, upper, "web.repo.org") is None
