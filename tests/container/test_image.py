"""The image, built with podman on a Debian base made here, and run against this machine's Postgres
and an S3 API server on the host network: `refit db upgrade`, `refit serve` on a champion the test
publishes, and one `refit run --force` with the tiny BERT, ending promoted. It fails if the image
cannot serve or retrain, runs as root, or holds a secret from the test's environment.

Its own tier: `pytest -m container tests/container` (a cold build takes about ten minutes). The
plain `pytest` skips it with that reason, and so does a machine without podman.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import resource
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from refit.ops.synth import generate_feedback, write_feedback

from conftest import TINY_TRAINING
from helpers import free_port
from model_helpers import review_data, tiny_config

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/refit:container-test"
# Distinctive fake secrets in the test's environment, during the build and the runs: neither may
# reach a layer, the history or the image's configuration.
TOKEN = f"refit-ctest-token-{uuid.uuid4().hex}"
AWS_SECRET = f"refit-ctest-aws-secret-{uuid.uuid4().hex}"
FIGURES: dict[str, str] = {}
BUILT: dict[str, str] = {}  # what the image fixture built from


def _load_build_script():
    spec = importlib.util.spec_from_file_location("container_build", ROOT / "scripts" / "container_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


container_build = _load_build_script()


def _selected(config) -> bool:
    """Whether this run asked for the container tier: `-m container`, or a path inside tests/container."""
    if re.search(r"(?<!not )\bcontainer\b", config.getoption("markexpr") or ""):
        return True
    here = Path(__file__).resolve().parent
    return any(Path(arg.split("::")[0]).resolve().is_relative_to(here) for arg in config.args)


@pytest.fixture(scope="module", autouse=True)
def _runs_on_its_own(request):
    if not _selected(request.config):
        pytest.skip("the container tier runs on its own: pytest -m container tests/container (.ci/run does)")
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (.ci/run installs it with apt-get)")
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if FIGURES and reporter is not None:
        with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
            reporter.write_sep("-", "container figures")
            for name, value in FIGURES.items():
                reporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory) -> dict[str, str]:
    """The environment of every podman command: the fake secrets, and a containers.conf for root
    on these machines (runc with cgroupfs, ulimits no higher than this machine's hard limits),
    unless CONTAINERS_CONF already names one. runc refused an nproc above the kernel's pid_max here."""
    env = {**os.environ, "REFIT_SERVE_TOKEN": TOKEN, "AWS_SECRET_ACCESS_KEY": AWS_SECRET}
    if "CONTAINERS_CONF" not in env:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], int(Path("/proc/sys/kernel/pid_max").read_text()))
        limits = [f"nofile={nofile}:{nofile}" if nofile != resource.RLIM_INFINITY else None]
        limits += [f"nproc={nproc}:{nproc}" if nproc != resource.RLIM_INFINITY else None]
        conf = tmp_path_factory.mktemp("podman") / "containers.conf"
        conf.write_text(
            "[containers]\n"
            f"default_ulimits = {json.dumps([limit for limit in limits if limit])}\n"
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )
        env["CONTAINERS_CONF"] = str(conf)
    return env


def podman(env: dict, *args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def debian_base(podman_env) -> str:
    """The minimal Debian base (mmdebstrap, podman import), cached in podman's store and ~/.cache/refit."""
    have_base = podman(podman_env, "image", "exists", container_build.DEBIAN_BASE).returncode == 0
    cached = (container_build.cache_dir() / f"container-base-{container_build.DEBIAN_SUITE}.tar").is_file()
    if not (have_base or cached or shutil.which("mmdebstrap")):
        pytest.skip("mmdebstrap is not installed and no Debian base is cached (.ci/run installs it with apt-get)")
    started = time.monotonic()
    image = container_build.ensure_debian_base(env=podman_env)
    FIGURES["debian base"] = (
        "in podman's store"
        if have_base
        else f"{'imported' if cached else 'built'} in {time.monotonic() - started:.0f} s"
    )
    return image


@pytest.fixture(scope="module")
def image(podman_env, debian_base) -> str:
    """refit's CPU image, built from the checkout on the Debian base."""
    BUILT["revision"] = container_build.git_revision()
    started = time.monotonic()
    result = container_build.build(tag=IMAGE, variant="cpu", base_image=debian_base, env=podman_env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    steps = len(re.findall(r"^\[\d+/\d+\] STEP ", result.stdout, flags=re.MULTILINE))
    cached = result.stdout.count("--> Using cache")
    size = int(podman(podman_env, "image", "inspect", "--format", "{{.Size}}", IMAGE, check=True).stdout)
    FIGURES["build"] = f"{elapsed:.0f} s ({cached} of {steps} steps from podman's cache)"
    FIGURES["image size"] = f"{size / 1e9:.2f} GB"
    return IMAGE


def run_args(env: dict[str, str]) -> list[str]:
    """`podman run` options for a container on the host network with ``env`` set. Each value goes
    by name from podman's own environment, so no secret is on a command line."""
    return ["--network", "host", *[arg for name in env for arg in ("--env", name)]]


# --- the build -----------------------------------------------------------------------------------


def test_a_file_named_like_a_secret_in_the_context_stops_the_build(podman_env, debian_base, tmp_path):
    context = tmp_path / "context"
    (context / "deployments").mkdir(parents=True)
    shutil.copy(ROOT / "Dockerfile", context / "Dockerfile")
    shutil.copy(ROOT / ".dockerignore", context / ".dockerignore")
    (context / "deployments" / "prefect.yaml").write_text("name: refit\n")
    (context / "deployments" / "gcp-credentials.json").write_text("{}\n")

    def check() -> subprocess.CompletedProcess:
        return container_build.build(
            tag="localhost/refit:context-check-test", base_image=debian_base, context=context,
            extra=["--target", "context-check"], env=podman_env,
        )  # fmt: skip

    refused = check()
    assert refused.returncode != 0
    said = re.search(r"^refusing to build: files named like secrets.*$", refused.stdout + refused.stderr, re.MULTILINE)
    assert said and said[0].endswith("(move them out): deployments/gcp-credentials.json"), refused.stderr[-3000:]
    (context / "deployments" / "gcp-credentials.json").unlink()
    accepted = check()
    assert accepted.returncode == 0, accepted.stderr[-3000:]  # the refusal above was the check's
    podman(podman_env, "rmi", "localhost/refit:context-check-test")


def test_the_image_runs_as_a_non_root_user_without_a_compiler_and_says_what_it_is(podman_env, image):
    [config] = json.loads(podman(podman_env, "image", "inspect", image, check=True).stdout)
    assert config["Config"]["User"] == "10001:10001"
    assert config["Config"]["Entrypoint"] == ["refit"]
    labels = config["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == container_build.version()
    assert labels["org.opencontainers.image.revision"] == BUILT["revision"]
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"

    uid = podman(podman_env, "run", "--rm", "--entrypoint", "id", image, "-u", check=True).stdout.strip()
    assert uid == "10001"
    tools = podman(
        podman_env, "run", "--rm", "--entrypoint", "sh", image, "-c",
        "for tool in gcc cc c++ g++ clang make ld as; do command -v $tool; done; true", check=True,
    ).stdout.split()  # fmt: skip
    assert tools == []
    help_text = podman(podman_env, "run", "--rm", image, "--help", check=True).stdout
    assert "serve" in help_text and "db" in help_text
    # a Kubernetes work pool's job runs `env prefect flow-run execute` (deployments/work-pools/)
    prefect = podman(podman_env, "run", "--rm", "--entrypoint", "env", image, "prefect", "--version", check=True)
    assert re.match(r"3\.", prefect.stdout.strip())
    # and a worker for a Kubernetes pool runs from the image too
    worker = podman(podman_env, "run", "--rm", "--entrypoint", "python", image, "-c",
                    "from prefect_kubernetes.worker import KubernetesWorker; print(KubernetesWorker.type)")  # fmt: skip
    assert worker.stdout.strip() == "kubernetes", worker.stderr[-3000:]


def test_the_packaged_base_model_loads_with_no_network(podman_env, image):
    script = (
        "from transformers import AutoModel, AutoTokenizer\n"
        "from refit.core.settings import load_settings\n"
        "from refit.training.modeling import resolve_base_model\n"
        "path = resolve_base_model(load_settings().base_model)\n"
        "model = AutoModel.from_pretrained(path)\n"
        "tokens = AutoTokenizer.from_pretrained(path)('a fine product', return_tensors='pt')\n"
        "print(path, model(**tokens).last_hidden_state.shape[-1])\n"
    )
    loaded = podman(podman_env, "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", script)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    path, width = loaded.stdout.split()
    assert path.startswith("/opt/refit/") and width == "384"


# --- the roles -----------------------------------------------------------------------------------


def test_db_upgrade_in_the_image_applies_the_schema(podman_env, image, empty_db_url):
    from sqlalchemy import inspect

    from refit.data.db import get_engine

    env = {"REFIT_DATABASE_URL": empty_db_url}
    upgraded = podman({**podman_env, **env}, "run", "--rm", *run_args(env), image, "db", "upgrade", "--json")
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    engine = get_engine(empty_db_url)
    try:
        assert {"feedback", "model_versions"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def published_champion(tiny_model, s3_bucket, tmp_path) -> str:
    """A small trained checkpoint published to the S3 server as the champion (v1)."""
    from refit.models.saving import save_checkpoint
    from refit.models.train import train
    from refit.registry.pointer import write_pointer
    from refit.registry.store import open_store
    from refit.registry.versions import publish_checkpoint

    result = train(tiny_config(tiny_model, epochs=1, seed=1), review_data(240))
    folder = save_checkpoint(result, tmp_path / "v1", {"version": "v1"})
    store = open_store(f"s3://{s3_bucket}/refit")
    write_pointer(store, publish_checkpoint(store, folder, "v1"), None)
    return f"s3://{s3_bucket}/refit"


def s3_env(store_url: str, endpoint: str) -> dict[str, str]:
    return {
        "REFIT_STORE_URL": store_url,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_serve_in_the_image_answers_with_the_token_and_refuses_without(
    podman_env, image, published_champion, s3_endpoint, tmp_path
):
    port = free_port()
    env = {**s3_env(published_champion, s3_endpoint), "REFIT_SERVE_TOKEN": TOKEN, "REFIT_SERVE_PORT": str(port)}
    name = f"refit-serve-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    # as deployments/kubernetes/serve.yaml runs it: a read-only root, the home folder writable (an
    # emptyDir there; a folder here, since podman 4.3 ignores a tmpfs mode) and /tmp (--read-only mounts it)
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o1777)
    read_only = ["--read-only", "--volume", f"{home}:/home/refit"]
    podman(
        {**podman_env, **env}, "run", "--detach", "--name", name, *read_only, *run_args(env), image, "serve", check=True
    )
    try:
        ready = None
        while time.monotonic() - started < 300 and ready is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    ready = time.monotonic() - started
            except httpx.HTTPError:
                pass
            if ready is None:
                state = podman(podman_env, "inspect", "--format", "{{.State.Running}}", name).stdout.strip()
                assert state == "true", podman(podman_env, "logs", name).stderr[-3000:]
                time.sleep(0.25)
        assert ready is not None, podman(podman_env, "logs", name).stderr[-3000:]
        FIGURES["podman run to /readyz 200"] = f"{ready:.1f} s"

        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        items = {"items": [{"text": "great sound, works well"}, {"text": "broke after a day"}]}
        answered = httpx.post(f"{url}/predict", json=items, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert answered.status_code == 200, answered.text
        body = answered.json()
        assert len(body["predictions"]) == 2 and body["model_version"] == "v1"
        assert httpx.post(f"{url}/predict", json=items, timeout=60).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert httpx.post(f"{url}/predict", json=items, headers=wrong, timeout=60).status_code == 401

        # the serving process itself runs as the image's user, not root
        uids = podman(podman_env, "exec", name, "sh", "-c", "grep ^Uid: /proc/1/status", check=True).stdout.split()
        assert uids[1:] == ["10001"] * 4
        # the image's HEALTHCHECK probes /readyz
        assert podman(podman_env, "healthcheck", "run", name).returncode == 0
    finally:
        podman(podman_env, "rm", "--force", name)


def _readable_copy(source: Path, target: Path) -> Path:
    """A copy the container's user (uid 10001) can read: pytest's temporary folders are 0700."""
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    for path in [target, *target.rglob("*")] if target.is_dir() else [target]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def test_a_retrain_in_the_image_ends_promoted(
    podman_env, image, empty_db_url, s3_bucket, s3_endpoint, tiny_model, tmp_path
):
    import boto3

    model = _readable_copy(tiny_model, tmp_path / "share" / "tiny-bert")
    feedback = write_feedback(generate_feedback(300, seed=3), tmp_path / "feedback.csv")
    feedback = _readable_copy(feedback, tmp_path / "share" / "feedback.csv")
    env = {
        **s3_env(f"s3://{s3_bucket}/refit", s3_endpoint),
        "REFIT_DATABASE_URL": empty_db_url,
        "REFIT_BASE_MODEL": "/models/tiny-bert",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        **TINY_TRAINING,
    }
    mounts = ["--volume", f"{model}:/models/tiny-bert:ro", "--volume", f"{feedback}:/data/feedback.csv:ro"]
    base = [{**podman_env, **env}, "run", "--rm", *run_args(env), *mounts, image]

    upgraded = podman(*base, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    ingested = podman(*base, "ingest", "/data/feedback.csv")
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    started = time.monotonic()
    run = podman(*base, "run", "--force", "--json", timeout=1200)
    assert run.returncode == 0, run.stderr[-5000:]
    FIGURES["refit run --force in the image (tiny BERT)"] = f"{time.monotonic() - started:.0f} s"
    assert '"outcome": "promoted"' in run.stdout, run.stdout[-3000:]
    listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket, Prefix="refit/")
    assert any(item["Key"].endswith("model.safetensors") for item in listed.get("Contents", []))


# --- secrets -------------------------------------------------------------------------------------


def test_no_secret_from_the_environment_is_in_the_image(podman_env, image):
    history = podman(podman_env, "history", "--no-trunc", "--format", "{{.CreatedBy}}", image, check=True).stdout
    inspected = podman(podman_env, "image", "inspect", image, check=True).stdout
    secrets = {TOKEN, AWS_SECRET}
    secrets |= {
        value
        for name, value in os.environ.items()
        if re.search(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|API_KEY", name) and len(value) >= 8
    }
    for secret in secrets:
        assert secret not in history
        assert secret not in inspected
    # pip's settings reached the build as a secret: no pip.conf, no /run/secrets in the image
    leftovers = podman(
        podman_env, "run", "--rm", "--user", "0", "--entrypoint", "sh", image, "-c",
        "ls /run/secrets 2>/dev/null; find / -xdev \\( -name pip.conf -o -name .pypirc -o -name .netrc \\) -print",
        check=True,
    ).stdout.split()  # fmt: skip
    assert leftovers == []
