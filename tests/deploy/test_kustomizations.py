"""Every kustomization a user may apply builds with the real kustomize (``kubectl
kustomize``), renders the whole worker in its namespace, and uses every file of its folder."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.deploy.support import BASE, CONTROLLER_CONFIGMAP, K8S, TARGETS, KustomizeError, kustomize, rendered

KINDS = {"Namespace", "Secret", "Deployment", "Service", "Ingress", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


def kustomization(folder):
    return yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))


def listed_files(folder) -> set:
    """Files of ``folder`` its kustomization names (resources that are files, and patches)."""
    k = kustomization(folder)
    names = [r for r in k.get("resources", [])] + [p["path"] for p in k.get("patches", []) if "path" in p]
    return {(folder / n).resolve() for n in names if (folder / n).is_file()}


@pytest.mark.parametrize("target", TARGETS)
def test_renders_the_worker_in_its_namespace(target):
    objs = rendered(target)
    assert sorted(o["kind"] for o in objs) == sorted(KINDS)
    namespaced = [o for o in objs if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"zephyr-edge"}


@pytest.mark.parametrize("target", TARGETS)
def test_every_file_of_a_kustomization_is_used(target):
    folder = TARGETS[target]
    stray = {f.resolve() for f in folder.glob("*.y*ml") if f.name != "kustomization.yaml"} - listed_files(folder)
    assert stray == set(), f"{target}: files its kustomization does not use"


def test_overlays_build_on_the_base_and_the_controller_snippet_stays_out():
    for target, folder in TARGETS.items():
        if target != "base":
            assert [(folder / r).resolve() for r in kustomization(folder)["resources"]] == [BASE.resolve()]
    for objs in map(rendered, TARGETS):
        assert not [o for o in objs if o["kind"] == "ConfigMap"], "the controller's ConfigMap is applied with the worker"
    assert not any(CONTROLLER_CONFIGMAP.parent.resolve() == f.resolve() for f in TARGETS.values())
    assert sorted(p.name for p in K8S.glob("*.y*ml")) == [], "manifests at the top of k8s/ are applied by nothing"


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "base"])
def test_overlays_set_the_image(target):
    [image] = kustomization(TARGETS[target])["images"]
    container = next(o for o in rendered(target) if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"


def test_kustomize_refuses_a_base_that_contains_its_overlays(tmp_path):
    """The layout k8s/ had before k8s/base/: the real kustomize refuses it (a cycle)."""
    root = tmp_path / "k8s"
    shutil.copytree(BASE, root)
    overlay = root / "overlays" / "single-region"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text("resources:\n  - ../..\n", encoding="utf-8")
    assert kustomize(root)
    with pytest.raises(KustomizeError, match="cycle"):
        kustomize(overlay)


def test_kustomize_refuses_a_missing_file(tmp_path):
    shutil.copytree(BASE, tmp_path / "base")
    (tmp_path / "base" / "pdb.yaml").unlink()
    with pytest.raises(KustomizeError, match="pdb.yaml"):
        kustomize(tmp_path / "base")
