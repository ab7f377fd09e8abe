"""deployments/prefect.yaml points at real flows with the parameters they take."""

import importlib.util
import inspect
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_deployment_names_a_flow_and_its_parameters():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module_spec = importlib.util.spec_from_file_location("entry", ROOT / path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        flow = getattr(module, name)
        assert flow.name == deployment["name"]
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters", {})) <= accepted
        assert deployment["work_pool"]["name"]
