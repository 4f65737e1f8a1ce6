"""docs/deployment.md names only real configuration keys, quotes the worker's real messages,
and gives an IAM policy with the permissions the S3 backend needs."""

from __future__ import annotations

import json
import re

import attrs
import pytest

from zephyr_edge.settings import config as cfg
from zephyr_edge import plugins

from tests.deploy.support import DEPLOYMENT_DOC, REPO

KEY = re.compile(r"ZE_WORKER_[A-Z0-9_]*[A-Z0-9]")
S3_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListBucket"}
#: Messages the troubleshooting section quotes: each must still be produced by the code.
QUOTED = [
    "is required but not set",
    "expected an integer, got",
    "cannot read",
    "invalid JSON:",
    "unknown configuration key",
    "did you mean",
    "not_ready",
    "unavailable: ",
    "ping timed out after",
    "authentication failed at",
    "cannot reach ",
    "Storage write check failed",
    "Storage write check passes again",
    "storage write check failed: ",
    "credentials and the bucket policy",
    "does not exist",
    "no application is published on this host",
    "no such file in this application",
    "this file is not stored (yet)",
    "backend unavailable, retry later",
    "internal server error",
    "missing can_write_jwt",
    "Write refused: ",
    "Request failed: ",
    "Request handled",
    "Replica mode enabled",
    "standalone server",
    "Cannot detect cluster mode at",
]


def doc() -> str:
    return DEPLOYMENT_DOC.read_text(encoding="utf-8")


def known_keys() -> set[str]:
    """Keys of the code (core and every installed backend) and of the configuration reference's tables."""
    keys = {cfg.CONFIG_FILE_KEY} | cfg.known_keys(cfg.WorkerConfig, "")
    for kind in plugins.GROUPS:
        for ep in plugins.installed(kind).values():
            try:
                cls = ep.load()
            except Exception:  # a broken third-party backend is not this test's business
                continue
            if getattr(cls, "Options", None) is not None:
                keys |= {cfg.key_of(f, cls.options_prefix) for f in attrs.fields(cls.Options)}
    reference = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    return keys | set(re.findall(r"^\|\s*`(ZE_WORKER_[A-Z0-9_]+)`", reference, re.M))


def unknown_keys(text: str) -> set[str]:
    """Keys that do not exist (a misspelled key quoted in the worker's own warning is fine)."""
    text = re.sub(r"unknown configuration key ZE_WORKER_\w+", "", text)
    return set(KEY.findall(text)) - known_keys()


def test_every_key_mentioned_exists():
    assert unknown_keys(doc()) == set()


def test_key_check_can_fail():
    assert unknown_keys("set ZE_WORKER_REDIS_CLUSTER_MODE=true") == {"ZE_WORKER_REDIS_CLUSTER_MODE"}


def code_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "zephyr_edge").rglob("*.py"))


@pytest.mark.parametrize("message", QUOTED)
def test_quoted_messages_are_the_worker_s(message):
    assert message in doc(), f"docs/deployment.md no longer quotes {message!r}"
    assert message in code_text(), f"the worker no longer says {message!r}: update docs/deployment.md"


def iam_actions(text: str) -> set[str]:
    actions: set[str] = set()
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        policy = json.loads(block)
        for statement in policy.get("Statement", []):
            actions |= set(statement["Action"])
    return actions


def test_iam_policy_grants_what_the_s3_backend_needs():
    assert S3_ACTIONS <= iam_actions(doc())
    assert not S3_ACTIONS <= iam_actions(doc().replace('["s3:ListBucket"]', "[]"))


def test_doc_covers_the_ingress_and_vm_steps():
    text = doc()
    for needle in ('enable-underscores-in-headers: "true"', "kubectl apply -k k8s/overlays/single-region",
                   "journalctl -u zephyr-edge -o cat | jq", "/readyz", "python3 -m venv /opt/zephyr-edge/venv"):
        assert needle in text


APPLY = re.compile(r"(?:apply -k|kubectl kustomize) (k8s/[\w./-]*)")


def kustomize_paths_problems(texts: dict[str, str]) -> list[str]:
    """Every ``kubectl apply -k k8s/...`` shown to users names a kustomization folder."""
    return [f"{name}: {path}" for name, text in texts.items() for path in APPLY.findall(text)
            if not (REPO / path / "kustomization.yaml").is_file()]


def test_every_applied_path_is_a_kustomization():
    files = [DEPLOYMENT_DOC, REPO / "README.md", *sorted((REPO / "k8s").rglob("*.yaml"))]
    texts = {str(f.relative_to(REPO)): f.read_text(encoding="utf-8") for f in files}
    assert sum(len(APPLY.findall(t)) for t in texts.values()) >= 4
    assert kustomize_paths_problems(texts) == []
    assert kustomize_paths_problems({"old": "kubectl apply -k k8s/"}) == ["old: k8s/"]
