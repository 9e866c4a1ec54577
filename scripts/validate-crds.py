#!/usr/bin/env python3
"""Validates the custom resources of rendered manifests that kubernetes-validate only warns about:
KEDA ScaledObject / TriggerAuthentication and Prometheus-operator ServiceMonitor / PrometheusRule,
with the cloudcoil pydantic models (types, required fields, patterns). A resource whose
re-serialised model drops a field had an unknown field: that is an error too. KEDA's aws-sqs-queue
trigger metadata is a free-form map in the CRD, so its keys and values are checked here.

Usage: validate-crds.py FILE...   (multi-document YAML)
"""
import sys

import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as prom

MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prom.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prom.PrometheusRule,
}
SQS_KEYS = {"queueURL", "queueURLFromEnv", "queueLength", "activationQueueLength", "awsRegion",
            "awsEndpoint", "identityOwner", "scaleOnInFlight", "scaleOnDelayed"}
errors = []


def dropped(original, dumped, path=""):
    """Paths present in `original` but missing from the model's dump (unknown fields)."""
    out = []
    if isinstance(original, dict) and isinstance(dumped, dict):
        for k, v in original.items():
            if k not in dumped:
                out.append(f"{path}.{k}")
            else:
                out.extend(dropped(v, dumped[k], f"{path}.{k}"))
    elif isinstance(original, list) and isinstance(dumped, list):
        for i, (a, b) in enumerate(zip(original, dumped)):
            out.extend(dropped(a, b, f"{path}[{i}]"))
    return out


checked = 0
for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        model = MODELS.get(key)
        if model is None:
            continue
        name = f"{path}: {d['kind']} {d.get('metadata', {}).get('name')}"
        try:
            obj = model.model_validate(d)
        except Exception as e:  # pydantic.ValidationError
            errors.append(f"{name}: {e}")
            continue
        dumped = obj.model_dump(by_alias=True, exclude_none=True, mode="json")
        for p in dropped(d, dumped):
            errors.append(f"{name}: unknown field {p}")
        if d["kind"] == "ScaledObject":
            for t in d["spec"].get("triggers", []):
                if t.get("type") == "aws-sqs-queue":
                    md = t.get("metadata", {})
                    for k in md:
                        if k not in SQS_KEYS:
                            errors.append(f"{name}: aws-sqs-queue metadata key {k!r} is not one KEDA reads")
                    if "queueURL" not in md and "queueURLFromEnv" not in md:
                        errors.append(f"{name}: aws-sqs-queue needs queueURL")
                    if not str(md.get("queueLength", "1")).isdigit():
                        errors.append(f"{name}: queueLength must be a whole number as a string")
                    if md.get("scaleOnInFlight", "true") not in ("true", "false"):
                        errors.append(f"{name}: scaleOnInFlight must be \"true\" or \"false\"")
        checked += 1

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"custom resources: {checked} checked, OK")
