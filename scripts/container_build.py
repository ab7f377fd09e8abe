"""Build refit's image with podman, with this machine's pip settings and CA bundle for the build only.

    python scripts/container_build.py                       # refit:cpu from the default base image
    python scripts/container_build.py --variant cuda --tag registry.example.com/ml/refit:0.1.0-cuda
    python scripts/container_build.py --debian-base         # base: Debian made here with mmdebstrap

What it adds to a plain ``podman build``:

- the OCI labels' version (pyproject.toml) and git revision, and a new CONTEXT_CHECK_ID so the
  Dockerfile's secret-file check runs on every build;
- this machine's pip settings (``pip config list``: index, extra indexes, find-links) as the
  ``pipconf`` build secret, and the local folders they name mounted read-only for the build;
- the host's CA bundle mounted over the image's for the build (a TLS-intercepting proxy's CA),
  never copied into a layer;
- with ``--debian-base``, a Debian root filesystem built with mmdebstrap from the Debian mirror
  apt uses, imported with ``podman import``, kept in podman's store and as a tarball in
  ``~/.cache/refit`` so that later builds, and CI on a fresh clone, reuse it.

The image is the same as ``podman build .`` or ``docker build .`` would make; only how pip reaches
its packages differs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_BASE = "localhost/refit-debian-base:bookworm"
DEBIAN_SUITE = "bookworm"
# python3-venv brings ensurepip's pip; ca-certificates lets pip and boto3 verify TLS.
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
PIP_KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "refit"


def podman(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], check=check, text=True, capture_output=True, env=env)


def debian_mirrors() -> list[str]:
    """The Debian archive URLs apt uses on this machine (deb822 or one-line sources)."""
    urls: list[str] = []
    for source in sorted(Path("/etc/apt").glob("sources.list*")) + sorted(Path("/etc/apt/sources.list.d").glob("*")):
        if not source.is_file() or not source.name.endswith((".list", ".sources")):
            continue
        for line in source.read_text().splitlines():
            line = line.strip()
            if line.startswith("URIs:"):
                urls += line.split()[1:]
            elif line.startswith("deb "):
                urls += [word for word in line.split()[1:] if "://" in word][:1]
    main = next((u for u in urls if not u.rstrip("/").endswith("-security")), "http://deb.debian.org/debian")
    security = next((u for u in urls if u.rstrip("/").endswith("-security")), None)
    return [main.rstrip("/"), *([security.rstrip("/")] if security else [])]


def ensure_debian_base(image: str = DEBIAN_BASE, env: dict[str, str] | None = None) -> str:
    """The minimal Debian base image: from podman's store, else the cached tarball, else mmdebstrap."""
    if podman("image", "exists", image, check=False, env=env).returncode == 0:
        return image
    tarball = cache_dir() / f"container-base-{DEBIAN_SUITE}.tar"
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        main, *security = debian_mirrors()
        sources = [f"deb {main} {DEBIAN_SUITE} main", f"deb {main} {DEBIAN_SUITE}-updates main"]
        sources += [f"deb {url} {DEBIAN_SUITE}-security main" for url in security]
        partial = tarball.with_suffix(".tar.partial")
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
             "--aptopt=APT::Install-Recommends \"false\"",
             "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
             "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
             "--format=tar", DEBIAN_SUITE, str(partial), *sources],
            check=True,
        )  # fmt: skip
        partial.rename(tarball)
    podman("import", "--quiet", "--change", 'CMD ["/bin/bash"]', str(tarball), image, env=env)
    return image


def pip_settings() -> dict[str, str]:
    """This machine's pip index settings, from every pip config file and PIP_* variable."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    settings: dict[str, str] = {}
    for line in listed.splitlines():
        match = re.match(r"^[^.]*\.([a-z-]+)='(.*)'$", line.strip())
        if match and match[1] in PIP_KEYS:
            settings[match[1]] = match[2]  # later lines (the environment) win, as in pip
    return settings


def local_folders(settings: dict[str, str]) -> list[Path]:
    """The folders on this machine that the pip settings name: file:// indexes and find-links."""
    folders: set[Path] = set()
    for value in settings.values():
        for word in value.split():
            path = Path(word[len("file://") :] if word.startswith("file://") else word)
            if not path.is_absolute() or not path.exists():
                continue
            # a file:// simple index links to ../../files/...: mount the folder that holds both
            folders.add(path.parent if path.name == "simple" else path)
    return sorted(folders)


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def git_revision() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if result.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return result.stdout.strip() + ("-dirty" if dirty else "")


def build_command(
    tag: str, variant: str, base_image: str | None, context: Path, pip_conf: Path | None, extra: list[str]
) -> list[str]:
    command = [
        # docker format: the OCI image format has no HEALTHCHECK, and podman drops it there
        "podman", "build", "--format", "docker", "--network", "host", "--tag", tag,
        "--build-arg", f"TORCH_VARIANT={variant}",
        "--build-arg", f"VERSION={version()}",
        "--build-arg", f"GIT_REVISION={git_revision()}",
        # the same as labels: buildah reuses a cached LABEL step after its build argument changed
        "--label", f"org.opencontainers.image.version={version()}",
        "--label", f"org.opencontainers.image.revision={git_revision()}",
        "--build-arg", f"CONTEXT_CHECK_ID={time.time_ns()}",
        "--file", str(context / "Dockerfile"),
    ]  # fmt: skip
    if base_image:
        command += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if CA_BUNDLE.is_file():
        command += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    if pip_conf is not None:
        command += ["--secret", f"id=pipconf,src={pip_conf}"]
        for folder in local_folders(pip_settings()):
            command += ["--volume", f"{folder}:{folder}:ro"]
    return [*command, *extra, str(context)]


def build(
    tag: str = "refit:cpu",
    variant: str = "cpu",
    base_image: str | None = None,
    debian_base: bool = False,
    context: Path = ROOT,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess:
    """Build the image; returns podman's completed process (its output captured unless ``capture`` is false)."""
    if debian_base:
        base_image = ensure_debian_base(env=env)
    settings = pip_settings()
    with tempfile.TemporaryDirectory(prefix="refit-build-") as scratch:
        pip_conf = None
        if settings:
            pip_conf = Path(scratch) / "pip.conf"
            pip_conf.write_text("[global]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))
        command = build_command(tag, variant, base_image, context, pip_conf, extra or [])
        return subprocess.run(command, capture_output=capture, text=True, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default=None, help="default: refit:<variant>")
    parser.add_argument("--variant", choices=("cpu", "cuda"), default="cpu", help="the torch build")
    parser.add_argument("--base-image", default=None, help="the BASE_IMAGE build argument")
    parser.add_argument("--debian-base", action="store_true", help="base: Debian made here with mmdebstrap")
    parser.add_argument("extra", nargs="*", help="more podman build arguments, after --")
    args = parser.parse_args()
    started = time.monotonic()
    result = build(args.tag or f"refit:{args.variant}", args.variant, args.base_image, args.debian_base,
                   extra=args.extra, capture=False)  # fmt: skip
    print(
        f"build {'ok' if result.returncode == 0 else 'failed'} in {time.monotonic() - started:.0f} s", file=sys.stderr
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
