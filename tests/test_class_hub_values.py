"""docs/z2jh/*.yaml against the Zero to JupyterHub chart's published values schema
(tests/data/z2jh/values.schema.yaml, vendored with its licence), merged over the chart's
own default values as `helm` merges them (mappings merge, everything else is replaced):
what `helm install -f` would accept or refuse, checked without a cluster."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

DOCS = Path(__file__).resolve().parents[1] / "docs" / "z2jh"
CHART = Path(__file__).resolve().parent / "data" / "z2jh"


def load(path: Path):
    return yaml.safe_load(path.read_text())


def helm_merge(defaults, override):
    merged = copy.deepcopy(defaults)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def chart_values(*files):
    values = load(CHART / "values.yaml")
    for name in files:
        values = helm_merge(values, load(DOCS / name))
    return values


def schema_errors(values) -> list:
    validator = jsonschema.Draft7Validator(load(CHART / "values.schema.yaml"))
    return sorted(f"{'.'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(values))


@pytest.mark.parametrize("files", [("values.yaml",), ("values.yaml", "values-privileged.yaml")])
def test_our_values_are_valid_for_the_chart(files):
    assert schema_errors(chart_values(*files)) == []


def test_the_schema_refuses_what_helm_would_refuse():
    """The validation can fail: a misspelt key and a wrong type in our file are caught."""
    values = chart_values("values.yaml")
    values["singleuser"]["extraEnvironment"] = {"LABKIT_HOME": "/srv/labkit"}
    values["singleuser"]["uid"] = "jovyan"
    errors = schema_errors(values)
    assert any("extraEnvironment" in error for error in errors), errors
    assert any(error.startswith("singleuser.uid") for error in errors), errors


def test_the_vm_kernel_values_run_no_privileged_pod():
    values = chart_values("values.yaml")
    spawner = values["hub"]["config"]["KubeSpawner"]
    assert spawner["privileged"] is False and spawner["allow_privilege_escalation"] is False
    assert values["singleuser"]["uid"] != 0 and values["singleuser"]["allowPrivilegeEscalation"] is False
    assert "LABKIT_HOME" in values["singleuser"]["extraEnv"]
    text = (DOCS / "values.yaml").read_text()
    assert "labkit in a VM" in text


def test_the_privileged_values_state_the_risk_and_keep_to_their_own_nodes():
    text = (DOCS / "values-privileged.yaml").read_text()
    assert "THE RISK" in text and "root on the node" in text
    values = chart_values("values.yaml", "values-privileged.yaml")
    assert values["hub"]["config"]["KubeSpawner"]["privileged"] is True
    assert values["singleuser"]["nodeSelector"] and values["singleuser"]["extraTolerations"]
