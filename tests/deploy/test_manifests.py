"""Rendered manifests of the base and of every overlay: Kubernetes schemas, security,
probes and ports against the worker's code and config, shutdown timing, Ingress limits.
Each check is also fed a broken copy, to prove it can fail."""

from __future__ import annotations

import attrs
import pytest
import yaml

from tests.deploy import dockerfile, k8s_checks
from tests.deploy.support import (
    CONTROLLER_CONFIGMAP, DOCKERFILE, MULTI_REGION, TARGETS, find, probe_routes, rendered, worker_config,
)

UNDERSCORES = "enable-underscores-in-headers"


def final_stage():
    return dockerfile.stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]


def image_uid() -> int:
    uid = dockerfile.numeric_user(final_stage())
    assert uid is not None, "the Dockerfile's final USER is not numeric"
    return uid


def deployment_of(objs):
    return find(objs, "Deployment")


def container_of(objs):
    return k8s_checks.worker_container(deployment_of(objs))


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates_against_the_kubernetes_schemas(target):
    problems = [p for obj in rendered(target) for p in k8s_checks.schema_problems(obj)]
    assert problems == []


def test_schema_check_can_fail():
    objs = rendered("base")
    container_of(objs)["securityContext"]["runAsNonroot"] = True  # a typo: strict mode refuses it
    find(objs, "Service")["spec"]["ports"][0]["port"] = "eighty"
    assert k8s_checks.schema_problems(deployment_of(objs))
    assert k8s_checks.schema_problems(find(objs, "Service"))


@pytest.mark.parametrize("target", TARGETS)
def test_security_settings_match_the_image(target):
    assert k8s_checks.security_problems(deployment_of(rendered(target)), image_uid()) == []


def _no_nonroot(objs):
    deployment_of(objs)["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot")
    container_of(objs)["securityContext"].pop("runAsNonRoot")


BREAK_SECURITY = {
    "runAsNonRoot missing": _no_nonroot,
    "root user": lambda objs: container_of(objs)["securityContext"].update(runAsUser=0),
    "other uid": lambda objs: container_of(objs)["securityContext"].update(runAsUser=1000),
    "writable root": lambda objs: container_of(objs)["securityContext"].pop("readOnlyRootFilesystem"),
    "escalation": lambda objs: container_of(objs)["securityContext"].update(allowPrivilegeEscalation=True),
    "capabilities kept": lambda objs: container_of(objs)["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
}


@pytest.mark.parametrize("case", BREAK_SECURITY)
def test_security_check_can_fail(case):
    objs = rendered("base")
    BREAK_SECURITY[case](objs)
    assert k8s_checks.security_problems(deployment_of(objs), image_uid())


@pytest.mark.parametrize("target", TARGETS)
def test_probes_use_the_worker_routes_and_ports_the_configured_port(target):
    objs, config = rendered(target), worker_config(target)
    assert k8s_checks.probe_problems(deployment_of(objs), probe_routes(config)) == []
    port = int(config.worker.port)
    assert k8s_checks.port_problems(objs, port, dockerfile.exposed(final_stage())) == []


def test_probe_and_port_checks_can_fail():
    objs, config = rendered("base"), worker_config("base")
    routes, port = probe_routes(config), int(config.worker.port)
    exposed = dockerfile.exposed(final_stage())
    container_of(objs)["livenessProbe"]["httpGet"]["path"] = routes["readiness"]
    assert k8s_checks.probe_problems(deployment_of(objs), routes)
    assert k8s_checks.port_problems(objs, port + 1, exposed)  # config says another port
    assert k8s_checks.port_problems(rendered("base"), port, exposed - {port})
    objs = rendered("base")
    find(objs, "Service")["spec"]["ports"][0]["targetPort"] = port + 1
    assert k8s_checks.port_problems(objs, port, exposed)


@pytest.mark.parametrize("target", TARGETS)
def test_termination_grace_covers_prestop_and_shutdown_grace(target):
    grace_ms = worker_config(target).worker.shutdown_grace_ms
    assert k8s_checks.grace_problems(deployment_of(rendered(target)), grace_ms) == []


def test_grace_check_can_fail():
    objs = rendered("base")
    grace_ms = worker_config("base").worker.shutdown_grace_ms
    sleep = k8s_checks.prestop_sleep_s(container_of(objs))
    deployment_of(objs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = int(sleep + grace_ms / 1000)
    assert k8s_checks.grace_problems(deployment_of(objs), grace_ms)
    container_of(objs).pop("lifecycle")
    assert k8s_checks.grace_problems(deployment_of(objs), grace_ms)


@pytest.mark.parametrize("target", TARGETS)
def test_config_mount_env_resources_and_workload(target):
    objs = rendered(target)
    secret = find(objs, "Secret")["metadata"]["name"]
    assert k8s_checks.mount_problems(deployment_of(objs), secret) == []
    assert k8s_checks.workload_problems(objs) == []


def test_mount_and_workload_checks_can_fail():
    objs = rendered("base")
    container_of(objs)["env"] = []
    assert k8s_checks.mount_problems(deployment_of(objs), find(objs, "Secret")["metadata"]["name"])
    assert k8s_checks.mount_problems(deployment_of(rendered("base")), "another-secret")
    objs = rendered("base")
    find(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] = {"app": "other"}
    assert k8s_checks.workload_problems(objs)


@pytest.mark.parametrize("target", TARGETS)
def test_ingress_admits_the_largest_upload_and_routes_to_the_service(target):
    objs, worker = rendered(target), worker_config(target).worker
    problems = k8s_checks.ingress_problems(
        find(objs, "Ingress"), find(objs, "Service"), worker.max_file_size_mb, worker.public_url
    )
    assert problems == []


@pytest.mark.parametrize("size,ok", [("256m", True), ("1g", True), ("0", True), ("255m", False), ("1m", False)])
def test_ingress_check_can_fail(size, ok):
    objs = rendered("base")
    find(objs, "Ingress")["metadata"]["annotations"][k8s_checks.BODY_SIZE] = size
    problems = k8s_checks.ingress_problems(find(objs, "Ingress"), find(objs, "Service"), 256, "")
    assert (problems == []) is ok


def test_ingress_check_needs_the_annotation_and_both_hosts():
    objs = rendered("base")
    ingress, service = find(objs, "Ingress"), find(objs, "Service")
    ingress["metadata"]["annotations"].pop(k8s_checks.BODY_SIZE)
    ingress["spec"]["rules"].pop()
    assert len(k8s_checks.ingress_problems(ingress, service, 1, "")) == 2


def test_multi_region_overlays_replicate_to_each_other_not_to_themselves():
    regions = {r: (worker_config(r), find(rendered(r), "Ingress")) for r in MULTI_REGION}
    assert k8s_checks.multi_region_problems(regions) == []


def test_multi_region_check_can_fail():
    def region(name, urls=None, replica=None):
        config = worker_config(name)
        worker = config.worker
        worker = attrs.evolve(worker, replicas_urls=worker.replicas_urls if urls is None else urls,
                              replica_name=worker.replica_name if replica is None else replica)
        return attrs.evolve(config, worker=worker), find(rendered(name), "Ingress")

    first, second = MULTI_REGION
    own = sorted(k8s_checks.explicit_hosts(find(rendered(first), "Ingress")))
    for broken in (
        {first: region(first, urls=tuple(f"https://{h}" for h in own)), second: region(second)},
        {first: region(first, urls=()), second: region(second)},
        {first: region(first, replica=""), second: region(second)},
        {first: region(first, replica="same"), second: region(second, replica="same")},
    ):
        assert k8s_checks.multi_region_problems(broken)


def test_ingress_nginx_snippet_keeps_underscore_headers():
    [configmap] = [d for d in yaml.safe_load_all(CONTROLLER_CONFIGMAP.read_text(encoding="utf-8")) if d]
    assert configmap["kind"] == "ConfigMap"
    assert configmap["data"][UNDERSCORES] == "true"
    assert k8s_checks.schema_problems(configmap) == []
