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


# --- the image (the top-level Dockerfile) and what runs it ------------------------------------------

POOLS = ROOT / "deployments" / "work-pools"


def _pool(name: str) -> dict:
    import json

    return json.loads((POOLS / f"{name}-kubernetes.json").read_text())


def test_both_pools_run_refit_image_and_the_workers_command_through_env():
    import json

    for name, variant in (("gpu", "cuda"), ("cpu", "cpu")):
        template = _pool(name)
        [container] = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"]
        # the image's entry point is `refit`: the worker's `prefect flow-run execute` (the args)
        # would otherwise reach refit as arguments
        assert container["command"] == ["env"]
        assert container["args"] == "{{ command }}"
        assert container["image"] == "{{ image }}"
        variables = template["variables"]["properties"]
        assert variables["image"]["default"] == f"refit:{variant}"
        used = json.dumps(template["job_configuration"])
        assert all("{{ " + variable + " }}" in used for variable in variables)
    cpu = _pool("cpu")["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(cpu)


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_the_image_runs_refit_as_a_numeric_non_root_user_with_a_healthcheck_and_labels():
    import re

    text = _dockerfile()
    runtime = text[text.index("AS runtime") :]
    assert '\nENTRYPOINT ["refit"]' in runtime
    [user] = re.findall(r"^USER (\S+)$", runtime, flags=re.MULTILINE)
    uid, gid = user.split(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit()  # numeric, so Kubernetes' runAsNonRoot can check it
    assert "HEALTHCHECK" in runtime and "refit-healthcheck" in runtime
    for label in ("version", "revision", "source", "licenses", "title"):
        assert f"org.opencontainers.image.{label}=" in runtime
    # settings come from the environment at run time: no secret-like variable is set in the image
    env_block = runtime[runtime.index("\nENV ") : runtime.index("\nWORKDIR")]
    names = re.findall(r"(\w+)=", env_block)
    assert "REFIT_SERVE_HOST" in names
    assert not [name for name in names if re.search(r"_TOKEN$|SECRET|PASSWORD|DATABASE_URL|^AWS_", name)]


def test_the_build_context_is_an_allowlist_and_the_check_covers_what_is_copied():
    import re

    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*"  # everything is out (.venv, .git, .refit, caches, bench outputs) but the list
    allowed = {line[1:].split("/")[0] for line in ignore if line.startswith("!")}
    text = _dockerfile()
    copied = set(re.findall(r"^COPY (?:--chmod=\S+ )?(\S+)", text, flags=re.MULTILINE)) - {"--from=wheel"}
    copied = {path.split("/")[0] for path in copied if not path.startswith("--from")}
    copied |= {"README.md"}  # copied with pyproject.toml in one COPY
    assert copied <= allowed
    check = text[text.index("AS context-check") : text.index("AS requirements")]
    assert all(folder in check for folder in allowed)


def test_the_serving_manifest_probes_scales_and_reads_its_token_from_a_secret():
    import re

    documents = {
        doc["kind"]: doc for doc in yaml.safe_load_all((ROOT / "deployments" / "kubernetes" / "serve.yaml").read_text())
    }
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {item["name"]: item for item in container["env"]}
    assert env["REFIT_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert "value" not in env["REFIT_SERVE_TOKEN"]
    [user] = re.findall(r"^USER (\d+):", _dockerfile(), flags=re.MULTILINE)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user)
    port = int(env["REFIT_SERVE_PORT"]["value"])
    assert container["ports"][0]["containerPort"] == port
    hpa = documents["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == documents["Deployment"]["metadata"]["name"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    assert documents["Service"]["spec"]["selector"] == documents["Deployment"]["spec"]["selector"]["matchLabels"]
