"""A small kustomize stand-in (kustomize itself is not available in CI).

It resolves the subset of ``kustomization.yaml`` that k8s/ uses and refuses every other
field, so a manifest change that needs more fails loudly here instead of being ignored:

- ``resources``: files (one or more YAML documents) and directories with a kustomization;
- ``namespace``: set on every namespaced object;
- ``images``: ``name`` → ``newName`` / ``newTag`` / ``digest`` on pod containers;
- ``patches`` (``path`` or inline ``patch``, optional ``target``): a YAML mapping is a
  strategic-merge patch (maps merge recursively, ``null`` deletes a key, lists whose
  items all carry a ``name`` merge by name, other lists are replaced: what Kubernetes does
  for containers, env, volumes and volume mounts); a YAML list is a JSON 6902 patch
  (``add``, ``replace``, ``remove``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "IngressClass", "PersistentVolume", "PriorityClass", "StorageClass"}
NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class KustomizeError(Exception):
    """The kustomization cannot be resolved (missing file, unsupported field...)."""


def kustomization_file(folder: Path) -> Path:
    for name in NAMES:
        if (folder / name).is_file():
            return folder / name
    raise KustomizeError(f"{folder}: no kustomization file")


def read(folder: Path) -> dict[str, Any]:
    data = yaml.safe_load(kustomization_file(folder).read_text(encoding="utf-8")) or {}
    unknown = set(data) - FIELDS
    if unknown:
        raise KustomizeError(f"{folder}: unsupported kustomization fields {sorted(unknown)}")
    return data


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def referenced_files(folder: Path) -> list[Path]:
    """Every file the kustomization at ``folder`` uses, recursively; raises when one is missing."""
    files = [kustomization_file(folder)]
    k = read(folder)
    for res in k.get("resources", []):
        path = (folder / res).resolve()
        if path.is_dir():
            files += referenced_files(path)
        elif path.is_file():
            files.append(path)
        else:
            raise KustomizeError(f"{folder}: resource {res!r} does not exist")
    for entry in k.get("patches", []):
        if "path" in entry:
            path = (folder / entry["path"]).resolve()
            if not path.is_file():
                raise KustomizeError(f"{folder}: patch {entry['path']!r} does not exist")
            files.append(path)
    return files


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k folder`` would send (names unchanged)."""
    folder = Path(folder)
    k = read(folder)
    referenced_files(folder)
    objs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = (folder / res).resolve()
        objs += render(path) if path.is_dir() else copy.deepcopy(load_docs(path))
    for entry in k.get("patches", []):
        apply_patch(objs, entry, folder)
    for image in k.get("images", []):
        set_image(objs, image)
    if "namespace" in k:
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    seen = set()
    for obj in objs:
        ident = (obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))
        if ident in seen:
            raise KustomizeError(f"{folder}: duplicate object {ident}")
        seen.add(ident)
    return objs


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    unknown = set(target) - {"kind", "name", "group", "version"}
    if unknown:
        raise KustomizeError(f"unsupported patch target fields {sorted(unknown)}")
    group, _, version = obj["apiVersion"].rpartition("/")
    actual = {"kind": obj["kind"], "name": obj["metadata"]["name"], "group": group, "version": version}
    return all(actual[key] == value for key, value in target.items())


def apply_patch(objs: list[dict[str, Any]], entry: dict[str, Any], folder: Path) -> None:
    if set(entry) - {"path", "patch", "target"} or ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{folder}: unsupported patch entry {entry}")
    text = (folder / entry["path"]).read_text(encoding="utf-8") if "path" in entry else entry["patch"]
    patch = yaml.safe_load(text)
    if isinstance(patch, dict):
        target = entry.get("target") or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
    elif isinstance(patch, list):
        if "target" not in entry:
            raise KustomizeError(f"{folder}: a JSON 6902 patch needs a target")
        target = entry["target"]
    else:
        raise KustomizeError(f"{folder}: a patch must be a mapping or a list")
    hits = [i for i, obj in enumerate(objs) if _matches(obj, target)]
    if not hits:
        raise KustomizeError(f"{folder}: patch target {target} matches no object")
    for i in hits:
        if isinstance(patch, dict):
            objs[i] = strategic_merge(objs[i], patch)
        else:
            json6902(objs[i], patch)


def strategic_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if isinstance(key, str) and key.startswith("$"):
                raise KustomizeError(f"unsupported strategic-merge directive {key}")
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        out = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = strategic_merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and "name" in item for item in items)


def json6902(obj: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        kind = op.get("op")
        if kind not in ("add", "replace", "remove"):
            raise KustomizeError(f"unsupported JSON 6902 operation {kind!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = obj
        try:
            for part in parts[:-1]:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
            last = parts[-1]
            if isinstance(parent, list):
                if kind == "add":
                    parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
                elif kind == "replace":
                    parent[int(last)] = copy.deepcopy(op["value"])
                else:
                    del parent[int(last)]
            elif kind == "add" or (kind == "replace" and last in parent):
                parent[last] = copy.deepcopy(op["value"])
            else:
                del parent[last]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise KustomizeError(f"JSON 6902 {kind} {op['path']}: no such location ({exc!r})") from None


def _split_image(image: str) -> tuple[str, str | None]:
    name = image.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
        return name, tag
    return name, None


def set_image(objs: list[dict[str, Any]], image: dict[str, Any]) -> None:
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise KustomizeError(f"unsupported images fields {sorted(unknown)}")
    for obj in objs:
        spec = obj.get("spec", {}).get("template", {}).get("spec") if obj["kind"] != "Pod" else obj.get("spec")
        for container in (spec or {}).get("containers", []) + (spec or {}).get("initContainers", []):
            name, tag = _split_image(container["image"])
            if name != image["name"]:
                continue
            new = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{new}@{image['digest']}"
            else:
                tag = image.get("newTag", tag)
                container["image"] = f"{new}:{tag}" if tag else new
