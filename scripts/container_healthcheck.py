#!/opt/refit/bin/python
"""The refit image's HEALTHCHECK: ``/readyz`` when the container runs ``refit serve``.

The image runs every role, and only ``refit serve`` has an HTTP endpoint. So the check looks for a
``refit serve`` process in the container: when there is one, the container is healthy while
``/readyz`` answers 200 on ``REFIT_SERVE_PORT`` (a champion is loaded); a worker, a flow run or a
one-off command is healthy while it runs. Standard library only, so it works in any image.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path


def serving() -> bool:
    """Whether a ``refit serve`` process runs in this container (it is PID 1 unless an init runs)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names = [os.path.basename(arg.decode(errors="replace")) for arg in argv]
        if "serve" in names and any(name == "refit" or name.startswith("refit.") for name in names):
            return True
    return False


def main() -> int:
    if not serving():
        return 0
    url = f"http://127.0.0.1:{os.environ.get('REFIT_SERVE_PORT', '8080')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
