"""deployments/prefect.yaml points at real flows with the parameters they take."""

import importlib
import inspect
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_deployment_names_a_flow_and_its_parameters():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path)
        flow = getattr(module, name)
        assert flow.name == deployment["name"]
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters", {})) <= accepted
        for trigger in deployment.get("triggers", []):
            assert set(trigger.get("parameters", {})) <= accepted
        assert deployment["work_pool"]["name"] in {"cpu", "gpu"}


def test_the_gpu_job_template_asks_for_a_gpu_node_and_a_gpu():
    import json

    template = json.loads((ROOT / "deployments" / "work-pools" / "gpu-kubernetes.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == "{{ node_selector }}"
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_limit }}"
    variables = template["variables"]["properties"]
    assert variables["gpu_limit"]["default"] == 1
    assert variables["node_selector"]["default"] == {"nvidia.com/gpu.present": "true"}
    # every variable is used by the job configuration, or the pool's form would be a lie
    used = json.dumps(template["job_configuration"])
    assert all("{{ " + name + " }}" in used for name in variables)
