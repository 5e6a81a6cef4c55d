"""Offline schema checks for the kubernetes provider (issue 12): Kubernetes objects with kubernetes-validate
(its bundled schemas), Chaos Mesh objects with the openAPIV3Schema of the CRDs vendored in cluster/k8s/crds/.

Both are strict, like `kubectl apply --validate=strict`: an unknown field is an error. The API server
would otherwise prune it silently, and a misspelt `direction` would make a different experiment."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

CRD_DIR = Path(__file__).resolve().parents[1] / "cluster" / "k8s" / "crds"
CRD_FILES = {"NetworkChaos": "chaos-mesh.org_networkchaos.yaml", "PodChaos": "chaos-mesh.org_podchaos.yaml"}
# The oldest and newest Kubernetes versions kubernetes-validate 1.37 bundles, and one in between.
KUBERNETES_VERSIONS = ("1.25.0", "1.31.0", "1.37.0")


def validate_kubernetes(document: dict, version: str = "1.37.0") -> None:
    """Raises kubernetes_validate.ValidationError (a jsonschema.ValidationError) on a bad object."""
    kubernetes_validate.validate(document, version, strict=True)


def _closed(schema: object) -> object:
    """Every object schema that lists its properties refuses others (strict field validation)."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        closed["additionalProperties"] = False
    return closed


@functools.cache
def _crd(kind: str) -> tuple[dict, str, str]:
    document = yaml.safe_load((CRD_DIR / CRD_FILES[kind]).read_text())
    version = document["spec"]["versions"][0]
    return _closed(version["schema"]["openAPIV3Schema"]), document["spec"]["group"], version["name"]


def validate_chaos(document: dict) -> None:
    """Raises jsonschema.ValidationError when the object does not match its vendored CRD."""
    schema, group, version = _crd(document.get("kind"))
    if document.get("apiVersion") != f"{group}/{version}":
        raise jsonschema.ValidationError(f"apiVersion {document.get('apiVersion')!r} is not {group}/{version}")
    jsonschema.Draft7Validator(copy.deepcopy(schema)).validate(document)
