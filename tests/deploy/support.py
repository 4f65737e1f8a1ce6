"""Paths of the deployment artefacts, the kustomizations as the real ``kubectl kustomize``
renders them, and the worker's own view of them: the config loader run on a Secret's
``config.json``, and the probe routes taken from the app's router."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from zephyr_edge.settings import config as cfg
from zephyr_edge.http import health
from tests import requirements
from zephyr_edge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SYSTEMD_UNIT = REPO / "deploy" / "systemd" / "zephyr-edge.service"
VM_CONFIG = REPO / "deploy" / "systemd" / "config.example.json"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
BASE = K8S / "base"
CONTROLLER_CONFIGMAP = K8S / "ingress-nginx" / "controller-configmap.yaml"
#: Kubernetes version whose schemas every manifest must satisfy (strict mode).
K8S_VERSION = "1.31"
#: Every kustomization a user may apply: the base and the overlays.
TARGETS = {
    "base": BASE,
    "single-region": K8S / "overlays" / "single-region",
    "us-east-1": K8S / "overlays" / "multi-region" / "us-east-1",
    "eu-west-1": K8S / "overlays" / "multi-region" / "eu-west-1",
}
MULTI_REGION = ("us-east-1", "eu-west-1")
CONFIG_FILE_NAME = "config.json"
CONFIG_MOUNT = "/etc/ze-worker"
#: Files users copy configuration from: every placeholder in them must be refused.
SHIPPED = (K8S, REPO / "deploy", REPO / "docs", REPO / "README.md", REPO / "examples")


def find(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one object of ``kind`` in ``objs``."""
    hits = [o for o in objs if o["kind"] == kind]
    assert len(hits) == 1, f"expected one {kind}, found {len(hits)}"
    return hits[0]


def secret_config_text(secret: dict[str, Any]) -> str:
    """The ``config.json`` held by a Secret (``stringData`` or base64 ``data``)."""
    if CONFIG_FILE_NAME in secret.get("stringData", {}):
        return secret["stringData"][CONFIG_FILE_NAME]
    return base64.b64decode(secret["data"][CONFIG_FILE_NAME]).decode("utf-8")


def load_config(text: str) -> cfg.Config:
    """``text`` as a config file, through the worker's own loader (raises ConfigError)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / CONFIG_FILE_NAME
        path.write_text(text, encoding="utf-8")
        return cfg.load({cfg.CONFIG_FILE_KEY: str(path)})


def config_problems(text: str) -> list[str]:
    """Every problem the worker reports when starting on ``text``."""
    try:
        load_config(text)
    except ConfigError as exc:
        return exc.problems
    return []


def raw_values(text: str) -> dict[str, Any]:
    """The JSON(C) file's keys and values as written (comments stripped as the worker does)."""
    return json.loads(cfg.strip_jsonc(text))


def secret_keys(config: cfg.Config) -> set[str]:
    """Keys of the core and of the selected backends whose values are secrets."""
    parts = [(cfg.WorkerConfig, "")]
    for choice in (config.storage, config.kv):
        if choice.cls.Options is not None:
            parts.append((choice.cls.Options, choice.cls.options_prefix))
    return set(cfg.secret_keys(parts))


def filled_in(text: str) -> str:
    """``text`` (a shipped config file) with every placeholder replaced, as a user does: by a
    long value derived from the placeholder (the same placeholder gets the same value, so
    the regions' shared JWT secret stays shared)."""
    values = raw_values(text)
    for key, value in values.items():
        if isinstance(value, str) and cfg.is_placeholder(value):
            values[key] = "filled-in-" + hashlib.sha256(value.encode("utf-8")).hexdigest()
    return json.dumps(values)


def shipped_config(text: str) -> cfg.Config:
    """The configuration a shipped file gives once its placeholders are replaced."""
    return load_config(filled_in(text))


def probe_routes(config: cfg.Config) -> dict[str, str]:
    """``{"liveness": path, "readiness": path}`` from the router of the real app."""
    from zephyr_edge.http.app import make_app

    app = make_app(config)
    paths = {}
    for route in app.router.routes():
        if route.method != "GET":
            continue
        if route.handler is health.healthz:
            paths["liveness"] = route.resource.canonical
        elif route.handler is health.readyz:
            paths["readiness"] = route.resource.canonical
    assert set(paths) == {"liveness", "readiness"}, f"health routes not found in the app: {paths}"
    return paths


#: Bound of one ``kubectl kustomize`` run (it reads local files only).
KUSTOMIZE_TIMEOUT_S = 120


class KustomizeError(Exception):
    """``kubectl kustomize`` refused a kustomization (its message is kept)."""


#: The overlays use fields of kustomize v5 (``patches`` with a target); older ones differ.
KUSTOMIZE_MAJOR = 5


@functools.lru_cache(maxsize=None)
def _kustomize_major(kubectl: str) -> int:
    result = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True,
                            timeout=KUSTOMIZE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    version = json.loads(result.stdout or "{}").get("kustomizeVersion", "") if result.returncode == 0 else ""
    digits = version.lstrip("v").split(".", 1)[0]
    return int(digits) if digits.isdigit() else 0


def kubectl() -> str:
    """The kubectl to render with; skip (or fail on CI) without one embedding kustomize v5+."""
    why = "tests/deploy renders every kustomization with `kubectl kustomize`"
    path = requirements.tool("kubectl", why)
    if _kustomize_major(path) < KUSTOMIZE_MAJOR:
        requirements.missing(f"{path} does not embed kustomize v{KUSTOMIZE_MAJOR} or newer: {why}")
    return path


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k folder`` would apply, rendered by the real kustomize."""
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True,
                            timeout=KUSTOMIZE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {folder}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.lru_cache(maxsize=None)
def _rendered(target: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(TARGETS[target]))


def rendered(target: str) -> list[dict[str, Any]]:
    """The objects of a kustomization target (a fresh copy: tests may break it)."""
    return copy.deepcopy(list(_rendered(target)))


def config_text(target: str) -> str:
    """The ``config.json`` of the target's Secret."""
    return secret_config_text(find(rendered(target), "Secret"))


def worker_config(target: str) -> cfg.Config:
    """The worker's configuration as the target's pods would load it, placeholders replaced."""
    return shipped_config(config_text(target))
