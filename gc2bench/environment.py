"""The running environment against the lock (gc2bench/requirements-lock.txt, made by ``bash .ci/lock``).

``lock_check()`` is what every record's ``versions.lock`` holds and what ``gc2bench env`` prints:
whether each package the lock pins for this Python and platform is installed at that version, and
the ones that are not. torch is compared by its public version (``2.13.0+cpu`` matches ``2.13.0``; the
build is reported apart); torchvision is expected only next to a CUDA torch (install.sh leaves it out
on CPU machines, where no registry build imports).
"""

from __future__ import annotations

import platform
import sys
from functools import lru_cache
from importlib import metadata, resources

LOCK_FILE = "requirements-lock.txt"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@lru_cache(maxsize=1)
def locked_versions() -> dict[str, str]:
    """{package: version} the lock pins for this interpreter and platform (markers evaluated), torch included."""
    from packaging.requirements import Requirement

    pins = {}
    for line in resources.files("gc2bench").joinpath(LOCK_FILE).read_text().splitlines():
        line = line.strip()
        if line.startswith("# torch==") or line.startswith("# torchvision=="):
            line = line[2:]
        elif not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            pins[_canonical(requirement.name)] = str(requirement.specifier).removeprefix("==")
    return pins


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def torch_build() -> str | None:
    """``cpu``, ``cuda <version>`` or None without torch (read from the installed package, no import)."""
    version = _installed("torch")
    if version is None:
        return None
    local = version.partition("+")[2]
    if local:
        return "cpu" if local == "cpu" else f"cuda {local}"
    requires = metadata.requires("torch") or []
    return "cuda" if any(r.startswith(("nvidia-", "cuda-")) for r in requires) else "cpu"


@lru_cache(maxsize=1)
def lock_check() -> dict:
    """``{"lock": file, "matches": bool, "differs": {package: {"locked": v, "installed": v | None}},
    "torch_build": ...}`` for the running interpreter."""
    differs = {}
    build = torch_build()
    for name, locked in sorted(locked_versions().items()):
        installed = _installed(name)
        if name == "torch" and installed is not None:
            installed_public = installed.partition("+")[0]
        else:
            installed_public = installed
        if name == "torchvision" and installed is None and build == "cpu":
            continue
        if installed_public != locked:
            differs[name] = {"locked": locked, "installed": installed}
    return {
        "lock": f"gc2bench/{LOCK_FILE}",
        "matches": not differs,
        "differs": differs,
        "torch_build": build,
        "python": platform.python_version(),
    }


def summary_line(check: dict | None = None) -> str:
    check = check or lock_check()
    head = f"environment: Python {check['python']}, torch build {check['torch_build']}"
    if check["matches"]:
        return f"{head}; matches the lock ({check['lock']})"
    listed = ", ".join(
        f"{name} {d['installed'] or 'missing'} (lock {d['locked']})" for name, d in check["differs"].items()
    )
    return f"{head}; differs from the lock ({check['lock']}) in {len(check['differs'])}: {listed}"


def main(argv: list[str] | None = None) -> int:
    """``python -m gc2bench.environment [--summary] [--check]``: the lock check (``gc2bench env`` prints the same)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m gc2bench.environment", description=main.__doc__)
    parser.add_argument("--summary", action="store_true", help="one line instead of JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when the environment differs from the lock")
    args = parser.parse_args(argv)
    check = lock_check()
    print(summary_line(check) if args.summary else json.dumps(check, indent=2))
    return 1 if args.check and not check["matches"] else 0


if __name__ == "__main__":
    sys.exit(main())
