"""Write requirements-runtime.lock and requirements-dev.lock from one frozen environment.

The images install the runtime lock only, so test and lint tools never reach a cluster; the
development venv installs the dev lock, which includes the runtime lock with `-r`, so both
always agree on every shared version. The runtime set is the closure of
requirements-runtime.in over the installed packages' own requirements (extras and
environment markers evaluated for this interpreter), taken from the frozen pins.

    .venv/bin/python -m pip freeze --all --exclude-editable > /tmp/freeze.txt
    .venv/bin/python scripts/split_lock.py /tmp/freeze.txt     # `make lock` does both
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
RUNTIME_IN = REPO / "requirements-runtime.in"
DEV_IN = REPO / "requirements-dev.in"
RUNTIME_LOCK = REPO / "requirements-runtime.lock"
DEV_LOCK = REPO / "requirements-dev.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
HEADER = "# Pinned {what} of whisper-moe (CPU torch). Regenerate with `make lock` after editing {source}.\n"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_in(path: Path) -> list[Requirement]:
    """Requirements of an .in file; `-r other.in` lines are followed."""
    found: list[Requirement] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            found += read_in(path.parent / line.split(None, 1)[1])
        else:
            found.append(Requirement(line))
    return found


def read_freeze(path: Path) -> dict[str, str]:
    """canonical name -> frozen `Name==version` line (torch's +cpu label dropped)."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "-")):
            continue
        line = re.sub(r"^torch==(\S+)\+cpu$", r"torch==\1", line)
        line = re.sub(r"^([A-Za-z0-9_.-]+) @ file:.*-([0-9][0-9.]*)-py.*$", r"\1==\2", line)
        match = PIN.match(line)
        if not match:
            raise SystemExit(f"{path}: cannot read `{raw}` as NAME==VERSION")
        pins[canonical(match.group(1))] = line
    return pins


def closure(roots: list[Requirement]) -> set[str]:
    """Canonical names of the roots and everything they need in this environment."""
    base_env = {key: str(value) for key, value in default_environment().items()}
    needed: set[str] = set()
    queue = [(root, set(root.extras)) for root in roots]
    seen: set[tuple[str, frozenset]] = set()
    while queue:
        requirement, extras = queue.pop()
        name = canonical(requirement.name)
        key = (name, frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        needed.add(name)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement.name} is required but not installed in "
                             f"{sys.prefix}: install the dev lock first") from None
        for text in dist.requires or []:
            child = Requirement(text)
            applies = child.marker is None or any(
                child.marker.evaluate({**base_env, "extra": extra}) for extra in (extras or {""}))
            if applies:
                queue.append((child, set(child.extras)))
    return needed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("freeze", type=Path,
                        help="output of `pip freeze --all --exclude-editable` (--all: torch needs "
                             "setuptools at run time, and plain freeze leaves it out)")
    args = parser.parse_args(argv)

    pins = read_freeze(args.freeze)
    for name in ("whisper-moe", "pip"):  # the project is installed from source; pip by venv
        pins.pop(name, None)
    runtime = closure(read_in(RUNTIME_IN))
    dev_roots = {canonical(req.name) for req in read_in(DEV_IN)}
    missing = sorted((runtime | dev_roots) - set(pins))
    if missing:
        raise SystemExit(f"not in {args.freeze}: {', '.join(missing)}")
    runtime_lines = [pins[name] for name in sorted(runtime)]
    dev_lines = [line for name, line in sorted(pins.items()) if name not in runtime]
    RUNTIME_LOCK.write_text(HEADER.format(what="runtime set (what the images install)",
                                          source=RUNTIME_IN.name) + "\n".join(runtime_lines) + "\n")
    DEV_LOCK.write_text(HEADER.format(what="development set (tests, linters, local tools)",
                                      source=DEV_IN.name)
                        + f"-r {RUNTIME_LOCK.name}\n" + "\n".join(dev_lines) + "\n")
    print(f"{RUNTIME_LOCK.name}: {len(runtime_lines)} packages; "
          f"{DEV_LOCK.name}: {len(dev_lines)} more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
