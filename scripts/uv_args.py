"""Print the uv arguments that make `uv pip install` see what pip is configured with here: its
wheel folders (find-links) and constraint files, from pip's configuration files and PIP_*
environment variables (one `pip config list`). Exit 1 where pip is told to use another index
or none (a mirror, an offline machine): there the Makefile installs with pip, since uv would try
pypi.org first. Paths with spaces are not supported (the Makefile splits the output on spaces).

    python3 scripts/uv_args.py   # e.g. --find-links /opt/wheels -c /etc/xdg/pip/constraints.txt
"""

from __future__ import annotations

import subprocess
import sys


def pip_settings() -> dict[str, list[str]]:
    """name -> values over every scope (files and environment), e.g. "find-links"."""
    listing = subprocess.run(  # a failure here makes the Makefile use pip
        [sys.executable, "-m", "pip", "config", "list"], check=True, capture_output=True, text=True
    ).stdout
    settings: dict[str, list[str]] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        name = key.rsplit(".", 1)[-1]  # global.find-links, :env:.find-links, install.no-index
        settings.setdefault(name, []).extend(value.strip().strip("'\"").split())
    return settings


def main() -> int:
    settings = pip_settings()
    no_index = any(v.lower() in ("1", "true", "yes", "on") for v in settings.get("no-index", []))
    if settings.get("index-url") or no_index:
        return 1
    args = [f"--find-links {p}" for p in dict.fromkeys(settings.get("find-links", []))]
    args += [f"-c {p}" for p in dict.fromkeys(settings.get("constraint", []))]
    print(" ".join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
