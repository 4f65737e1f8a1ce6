"""The kustomizations resolve (every referenced file exists, every base manifest is listed)
and our loader behaves like kustomize for what k8s/ uses."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy import kustomize
from tests.deploy.support import CONTROLLER_CONFIGMAP, K8S, TARGETS, rendered

KINDS = {"Secret", "Deployment", "Service", "Ingress", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


@pytest.mark.parametrize("target", TARGETS)
def test_every_referenced_file_exists(target):
    files = kustomize.referenced_files(TARGETS[target])
    assert all(f.is_file() for f in files)


def test_base_lists_every_manifest_and_overlays_use_every_file():
    base = set(kustomize.referenced_files(K8S))
    listed_here = {f for f in K8S.glob("*.y*ml")}
    assert listed_here - base == set(), "manifests in k8s/ missing from k8s/kustomization.yaml"
    for target, folder in TARGETS.items():
        used = set(kustomize.referenced_files(folder))
        stray = {f for f in folder.glob("*.y*ml")} - used
        assert not stray, f"{target}: files not used by its kustomization: {stray}"
    assert CONTROLLER_CONFIGMAP not in base, "the controller's ConfigMap must not be applied with the worker"


@pytest.mark.parametrize("target", TARGETS)
def test_renders_the_worker_in_its_namespace(target):
    objs = rendered(target)
    assert KINDS <= {o["kind"] for o in objs}
    namespaced = [o for o in objs if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"zephyr-edge"}


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "base"])
def test_overlays_set_the_image(target):
    image = kustomize.read(TARGETS[target])["images"][0]
    container = next(o for o in rendered(target) if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"


def _write(folder, name, data):
    (folder / name).write_text(yaml.safe_dump(data), encoding="utf-8")


DEPLOY = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
          "spec": {"template": {"spec": {"containers": [
              {"name": "a", "image": "img:1", "env": [{"name": "X", "value": "1"}]},
              {"name": "b", "image": "other:2", "args": ["x", "y"]}]}}}}


def test_loader_applies_strategic_merge_json6902_images_and_namespace(tmp_path):
    _write(tmp_path, "d.yaml", DEPLOY)
    _write(tmp_path, "smp.yaml", {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                                  "spec": {"template": {"spec": {"containers": [
                                      {"name": "a", "env": [{"name": "Y", "value": "2"}]},
                                      {"name": "b", "args": ["z"]}]}}}})
    _write(tmp_path, "p.yaml", [{"op": "add", "path": "/spec/replicas", "value": 3}])
    _write(tmp_path, "kustomization.yaml", {
        "resources": ["d.yaml"], "namespace": "ns",
        "patches": [{"path": "smp.yaml"}, {"path": "p.yaml", "target": {"kind": "Deployment", "name": "d"}}],
        "images": [{"name": "img", "newName": "reg/img", "newTag": "9"}],
    })
    [obj] = kustomize.render(tmp_path)
    a, b = obj["spec"]["template"]["spec"]["containers"]
    assert a["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]
    assert b["args"] == ["z"]
    assert (a["image"], b["image"]) == ("reg/img:9", "other:2")
    assert obj["spec"]["replicas"] == 3 and obj["metadata"]["namespace"] == "ns"


@pytest.mark.parametrize("kustomization,extra", [
    ({"resources": ["d.yaml"], "secretGenerator": [{"name": "s"}]}, {}),
    ({"resources": ["missing.yaml"]}, {}),
    ({"resources": ["d.yaml"], "patches": [{"path": "p.yaml", "target": {"kind": "Service"}}]},
     {"p.yaml": [{"op": "add", "path": "/spec/replicas", "value": 3}]}),
    ({"resources": ["d.yaml"], "patches": [{"path": "p.yaml", "target": {"kind": "Deployment"}}]},
     {"p.yaml": [{"op": "replace", "path": "/spec/nothing/here", "value": 3}]}),
    ({"resources": ["d.yaml", "d.yaml"]}, {}),
])
def test_loader_refuses_what_kustomize_would_refuse_or_it_does_not_support(tmp_path, kustomization, extra):
    _write(tmp_path, "d.yaml", DEPLOY)
    for name, data in extra.items():
        _write(tmp_path, name, data)
    _write(tmp_path, "kustomization.yaml", kustomization)
    with pytest.raises(kustomize.KustomizeError):
        kustomize.render(tmp_path)
