"""Validates rendered Kubernetes manifests offline, for tests/tests/deploy.rs.

Built-in kinds: kubernetes-validate --strict (the official OpenAPI schemas of the Kubernetes
version given; unknown fields and wrong types are errors). Custom resources (Prometheus Operator,
cert-manager) are not in those schemas: they are validated with cloudcoil's models, which are
generated from the operators' CRD schemas (types, required fields, enums), plus a strictness
check of our own — every field must be one the model knows (pydantic ignores unknown ones).

Usage: validate.py KUBERNETES_VERSION FILE...   prints a JSON list, one entry per object:
{"file", "kind", "name", "validator", "errors": [...]}; exits 0 (the caller judges the list).
"""

import json
import sys

import kubernetes_validate
import yaml
from cloudcoil.models.cert_manager import v1 as cert_manager_v1
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator_v1

CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus_operator_v1.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): prometheus_operator_v1.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus_operator_v1.PrometheusRule,
    ("cert-manager.io/v1", "Certificate"): cert_manager_v1.Certificate,
    ("cert-manager.io/v1", "Issuer"): cert_manager_v1.Issuer,
    ("cert-manager.io/v1", "ClusterIssuer"): cert_manager_v1.ClusterIssuer,
}


def unknown_fields(given, known, path):
    """Paths present in the input but dropped by the model's round trip: fields it does not know."""
    out = []
    if isinstance(given, dict):
        if not isinstance(known, dict):
            return [path or "."]
        for k, v in given.items():
            p = f"{path}.{k}" if path else k
            if k not in known:
                out.append(p)
            else:
                out.extend(unknown_fields(v, known[k], p))
    elif isinstance(given, list) and isinstance(known, list):
        for i, (g, k) in enumerate(zip(given, known)):
            out.extend(unknown_fields(g, k, f"{path}[{i}]"))
    return out


def validate_custom(model, doc):
    try:
        obj = model.model_validate(doc)
    except Exception as e:  # pydantic.ValidationError: every error, with its path
        return [str(e)]
    known = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"unknown field {p}" for p in unknown_fields(doc, known, "")]


def main():
    version, files = sys.argv[1], sys.argv[2:]
    report = []
    for f in files:
        with open(f) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d is not None]
        for doc in docs:
            kind, api = doc.get("kind", "?"), doc.get("apiVersion", "?")
            name = (doc.get("metadata") or {}).get("name", "?")
            entry = {"file": f, "kind": kind, "apiVersion": api, "name": name}
            model = CUSTOM.get((api, kind))
            if model is not None:
                entry["validator"] = f"cloudcoil {model.__module__}.{model.__name__}"
                entry["errors"] = validate_custom(model, doc)
            else:
                entry["validator"] = f"kubernetes-validate --strict {version}"
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                    entry["errors"] = []
                except kubernetes_validate.SchemaNotFoundError as e:
                    entry["errors"] = [f"no schema: {e}"]
                except kubernetes_validate.ValidationError as e:
                    where = ".".join(str(p) for p in e.path)
                    entry["errors"] = [f"{where}: {e.message}"]
            report.append(entry)
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
