"""Checks of rendered Kubernetes objects. Each returns a list of problems (empty: fine),
so that the tests can also feed them broken copies and see them fail."""

from __future__ import annotations

import re
import shlex
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate

from tests.deploy.support import CONFIG_FILE_NAME, CONFIG_MOUNT, K8S_VERSION

Obj = dict[str, Any]
BODY_SIZE = "nginx.ingress.kubernetes.io/proxy-body-size"
TIMEOUTS = ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout")
NGINX_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def schema_problems(obj: Obj, version: str = K8S_VERSION) -> list[str]:
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{where}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    return []


def pod_spec(deployment: Obj) -> Obj:
    return deployment["spec"]["template"]["spec"]


def worker_container(deployment: Obj) -> Obj:
    containers = pod_spec(deployment)["containers"]
    return next((c for c in containers if c["name"] == "zephyr-edge"), containers[0])


def security_problems(deployment: Obj, uid: int) -> list[str]:
    pod = pod_spec(deployment).get("securityContext", {})
    problems = []
    for c in pod_spec(deployment)["containers"] + pod_spec(deployment).get("initContainers", []):
        sc = c.get("securityContext", {})
        merged = {**pod, **sc}
        name = c["name"]
        if merged.get("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if merged.get("runAsUser") != uid:
            problems.append(f"{name}: runAsUser is {merged.get('runAsUser')!r}, the image's USER is {uid}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{name}: capabilities added")
        if merged.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
    return problems


def resolve_port(container: Obj, port: Any) -> Any:
    """A probe's or Service's port (a number or a container port name) as a number."""
    if isinstance(port, str):
        return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), port)
    return port


def port_problems(objs: list[Obj], port: int, exposed: set[int]) -> list[str]:
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    container = worker_container(deployment)
    problems = []
    if port not in {p["containerPort"] for p in container.get("ports", [])}:
        problems.append(f"container ports {container.get('ports')} lack the configured port {port}")
    for probe in ("livenessProbe", "readinessProbe"):
        got = resolve_port(container, container.get(probe, {}).get("httpGet", {}).get("port"))
        if got != port:
            problems.append(f"{probe} port resolves to {got!r}, configured port is {port}")
    if port not in exposed:
        problems.append(f"the Dockerfile exposes {sorted(exposed)}, configured port is {port}")
    for service in (o for o in objs if o["kind"] == "Service"):
        for sp in service["spec"]["ports"]:
            got = resolve_port(container, sp.get("targetPort", sp["port"]))
            if got != port:
                problems.append(f"Service port {sp.get('name')} targets {got!r}, configured port is {port}")
    return problems


def probe_problems(deployment: Obj, routes: dict[str, str]) -> list[str]:
    container = worker_container(deployment)
    problems = []
    for probe, kind in (("livenessProbe", "liveness"), ("readinessProbe", "readiness")):
        path = container.get(probe, {}).get("httpGet", {}).get("path")
        if path != routes[kind]:
            problems.append(f"{probe} path is {path!r}, the worker's {kind} route is {routes[kind]!r}")
    return problems


def prestop_sleep_s(container: Obj) -> float | None:
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    if command[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
        command = shlex.split(command[2])
    if len(command) == 2 and command[0].rsplit("/", 1)[-1] == "sleep":
        return float(command[1])
    return None


def grace_problems(deployment: Obj, shutdown_grace_ms: int) -> list[str]:
    sleep = prestop_sleep_s(worker_container(deployment))
    if sleep is None:
        return ["no preStop sleep: the pod may get requests after SIGTERM"]
    period = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
    if not period > sleep + shutdown_grace_ms / 1000:
        return [f"terminationGracePeriodSeconds {period} <= preStop {sleep:g} s + shutdown grace "
                f"{shutdown_grace_ms / 1000:g} s"]
    return []


def mount_problems(deployment: Obj, secret_name: str) -> list[str]:
    spec, container = pod_spec(deployment), worker_container(deployment)
    problems = []
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    mount = mounts.get(CONFIG_MOUNT)
    if mount is None or volumes.get(mount["name"], {}).get("secret", {}).get("secretName") != secret_name:
        problems.append(f"Secret {secret_name} is not mounted at {CONFIG_MOUNT}")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    if env.get("ZE_WORKER_CONFIG_JSON") != f"{CONFIG_MOUNT}/{CONFIG_FILE_NAME}":
        problems.append(f"ZE_WORKER_CONFIG_JSON is {env.get('ZE_WORKER_CONFIG_JSON')!r}")
    tmp = mounts.get("/tmp")
    if tmp is None or "emptyDir" not in volumes.get(tmp["name"], {}):
        problems.append("no emptyDir at /tmp (the root filesystem is read-only)")
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(resources.get(part, {})):
            problems.append(f"resources.{part} must set cpu and memory")
    return problems


def workload_problems(objs: list[Obj]) -> list[str]:
    """Replicas, spreading, and every selector (Service, PDB, HPA) pointing at the pods."""
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    problems = []
    if deployment["spec"].get("replicas") != 2:
        problems.append(f"replicas is {deployment['spec'].get('replicas')}, expected 2")

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    spread = pod_spec(deployment).get("topologySpreadConstraints", [])
    if not spread or not all(selects(c.get("labelSelector", {}).get("matchLabels", {})) for c in spread):
        problems.append("topologySpreadConstraints missing or not selecting the pods")
    for kind, selector in (
        ("Service", lambda o: o["spec"].get("selector", {})),
        ("PodDisruptionBudget", lambda o: o["spec"].get("selector", {}).get("matchLabels", {})),
    ):
        objs_of_kind = [o for o in objs if o["kind"] == kind]
        if not objs_of_kind or not all(selects(selector(o)) for o in objs_of_kind):
            problems.append(f"{kind} missing or not selecting the pods")
    hpas = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    if not hpas or any(h["apiVersion"] != "autoscaling/v2" or h["spec"]["scaleTargetRef"] != ref for h in hpas):
        problems.append("HorizontalPodAutoscaler (autoscaling/v2) missing or not targeting the Deployment")
    return problems


def body_size_bytes(text: str) -> float:
    """An nginx size (``256m``, ``1g``, ``1048576``); ``0`` means unlimited."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise ValueError(f"not an nginx size: {text!r}")
    size = int(m.group(1)) * NGINX_UNITS[m.group(2).lower()]
    return float("inf") if size == 0 else size


def ingress_problems(ingress: Obj, service: Obj, max_file_size_mb: int, public_url: str) -> list[str]:
    notes = ingress["metadata"].get("annotations", {})
    problems = []
    if BODY_SIZE not in notes:
        problems.append(f"no {BODY_SIZE} annotation (nginx's default is 1m)")
    elif body_size_bytes(notes[BODY_SIZE]) < max_file_size_mb * 1024**2:
        problems.append(f"{BODY_SIZE} {notes[BODY_SIZE]} is below ZE_WORKER_MAX_FILE_SIZE_MB={max_file_size_mb}")
    for key in TIMEOUTS:
        if not re.fullmatch(r"\d+", str(notes.get(key, ""))):
            problems.append(f"no {key} annotation")
    hosts = [r.get("host", "") for r in ingress["spec"]["rules"]]
    edge = next((h for h in hosts if h.startswith("ze.")), None)
    if edge is None or "*." + edge[3:] not in hosts:
        problems.append(f"rules {hosts} lack ze.<domain> and *.<domain>")
    if public_url and urlsplit(public_url).hostname not in hosts:
        problems.append(f"ZE_WORKER_PUBLIC_URL {public_url} is not an Ingress host")
    ports = {p.get("name") for p in service["spec"]["ports"]} | {p["port"] for p in service["spec"]["ports"]}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            port = backend["port"].get("name", backend["port"].get("number"))
            if backend["name"] != service["metadata"]["name"] or port not in ports:
                problems.append(f"{rule.get('host')}: backend {backend} is not the worker's Service")
    return problems


def explicit_hosts(ingress: Obj) -> set[str]:
    return {r["host"] for r in ingress["spec"]["rules"] if r.get("host") and not r["host"].startswith("*")}


def multi_region_problems(regions: dict[str, tuple[Any, Obj]]) -> list[str]:
    """``regions``: overlay name -> (worker config, rendered Ingress). Each region names
    itself and replicates to every other region's own host, never to itself."""
    problems = []
    names = {overlay: config.worker.replica_name for overlay, (config, _) in regions.items()}
    if not all(names.values()) or len(set(names.values())) != len(names):
        problems.append(f"replica names must be set and distinct: {names}")
    if len({config.worker.jwt_secret for config, _ in regions.values()}) != 1:
        problems.append("regions do not share ZE_WORKER_JWT_SECRET")
    own = {overlay: explicit_hosts(ingress) for overlay, (_, ingress) in regions.items()}
    shared = set.intersection(*own.values())
    for overlay, (config, _) in regions.items():
        urls = config.worker.replicas_urls
        targets = {urlsplit(u).hostname for u in urls}
        if len(urls) != len(regions) - 1:
            problems.append(f"{overlay}: {len(urls)} replica URLs for {len(regions) - 1} other regions")
        if targets & own[overlay]:
            problems.append(f"{overlay}: replica URLs {list(urls)} point at this region's own hosts")
        for other in regions:
            if other != overlay and not targets & (own[other] - shared):
                problems.append(f"{overlay}: no replica URL points at {other} ({sorted(own[other] - shared)})")
    return problems
