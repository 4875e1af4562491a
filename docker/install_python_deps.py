"""Install requirements.lock with the torch build that fits the machine (CPU or one CUDA version).

The lock pins one torch version, but PyPI's Linux torch wheel drags in CUDA libraries that a
CPU image never uses, and a GPU image needs the wheel built for its CUDA version. So the torch
family (torch, torchvision, torchaudio) is installed at its locked version from the PyTorch
index given on the command line, together with the runtime that this build of torch asks for
(triton, nvidia-* libraries); the rest of the lock is then installed exactly as pinned.

    python docker/install_python_deps.py requirements.lock \\
        --torch-index-url https://download.pytorch.org/whl/cu130

`--only NAME ...` installs just those packages at their locked versions (CI jobs that need a
linter and nothing else). Used by docker/Dockerfile and by the CI workflows, so images and CI
install the same way.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
# Packages whose right version depends on the torch build: the torch index resolves them.
TORCH_RUNTIME_PATTERN = re.compile(r"^(triton|pytorch-triton(-.+)?|nvidia-.+)$")
# Index and link options name the machine the lock was made on; the image uses PyPI.
LOCAL_OPTION_PATTERN = re.compile(
    r"^(-i|--index-url|--extra-index-url|-f|--find-links|--trusted-host)\b"
)
PIN_PATTERN = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;\\+]+)(\+[^\s;\\]+)?"
)
PROJECT_NAME = "whisper-moe"


def normalize_name(name: str) -> str:
    """PEP 503 name, so `Torch_Audio` and `torch-audio` are the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def logical_lines(lock_text: str) -> list[str]:
    """Requirement entries with backslash continuations (--hash lines) joined, comments dropped."""
    entries: list[str] = []
    current = ""
    for raw_line in lock_text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw_line).rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            entries.append(" ".join(current.split()))
        current = ""
    if current.strip():
        entries.append(" ".join(current.split()))
    return entries


def split_lock(lock_text: str) -> tuple[dict[str, str], list[str]]:
    """Locked torch-family versions (local label such as +cpu removed) and every other entry."""
    torch_versions: dict[str, str] = {}
    remaining: list[str] = []
    for entry in logical_lines(lock_text):
        if LOCAL_OPTION_PATTERN.match(entry) or entry.startswith(("-e ", "--editable")):
            continue
        match = PIN_PATTERN.match(entry)
        name = normalize_name(match.group(1)) if match else ""
        if not match and " @ " in entry:
            name = normalize_name(entry.split(" @ ", 1)[0].strip())
        if name == PROJECT_NAME:
            continue  # the project itself is installed from source, not from the lock
        if name in TORCH_FAMILY and match:
            torch_versions[name] = match.group(3)
        elif TORCH_RUNTIME_PATTERN.match(name):
            continue
        else:
            remaining.append(entry)
    return torch_versions, remaining


def install_commands(
    torch_versions: dict[str, str], rest_file: Path, torch_index_url: str
) -> list[list[str]]:
    """The two pip runs: torch family from the torch index, then the rest of the lock."""
    pip = [sys.executable, "-m", "pip", "install"]
    commands = []
    if torch_versions:
        pins = [f"{name}=={version}" for name, version in sorted(torch_versions.items())]
        commands.append(pip + ["--index-url", torch_index_url] + pins)
    commands.append(pip + ["-r", str(rest_file)])
    return commands


def select_entries(entries: list[str], names: list[str], lock: Path) -> list[str]:
    """The locked entries of the named packages; ValueError naming any that the lock lacks."""
    wanted = {normalize_name(name) for name in names}
    chosen = {}
    for entry in entries:
        match = PIN_PATTERN.match(entry)
        if match and normalize_name(match.group(1)) in wanted:
            chosen[normalize_name(match.group(1))] = entry
    missing = sorted(wanted - set(chosen))
    if missing:
        raise ValueError(
            f"{lock} pins no {', '.join(missing)}: add it to requirements.in and run `make lock`"
        )
    return list(chosen.values())


def run_pip(commands: list[list[str]], dry_run: bool) -> None:
    for command in commands:
        print("+", " ".join(command), flush=True)
        if not dry_run:
            subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path, help="pinned requirements (requirements.lock)")
    parser.add_argument(
        "--torch-index-url",
        help="PyTorch wheel index: https://download.pytorch.org/whl/cpu, .../cu130, ...",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="install only these locked packages"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands only")
    args = parser.parse_args(argv)

    if not args.lock.is_file():
        parser.error(
            f"{args.lock} not found: run this from the repository root, where requirements.lock is"
        )
    torch_versions, remaining = split_lock(args.lock.read_text())
    if args.only:
        try:
            pins = select_entries(remaining, args.only, args.lock)
        except ValueError as error:
            parser.error(str(error))
        run_pip([[sys.executable, "-m", "pip", "install", *pins]], args.dry_run)
        return 0
    if not args.torch_index_url:
        parser.error("--torch-index-url is required unless --only is given")
    if "torch" not in torch_versions:
        parser.error(
            f"{args.lock} pins no torch==VERSION line; regenerate the lock from requirements.in"
        )

    with tempfile.TemporaryDirectory() as scratch:
        rest_file = Path(scratch) / "requirements-without-torch.txt"
        rest_file.write_text("\n".join(remaining) + "\n")
        run_pip(install_commands(torch_versions, rest_file, args.torch_index_url), args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
