"""Install a requirements lock with the torch build that fits the machine (CPU or one CUDA version).

The lock pins one torch version, but PyPI's Linux torch wheel drags in CUDA libraries that a
CPU image never uses, and a GPU image needs the wheel built for its CUDA version. So the torch
family (torch, torchvision, torchaudio) is installed at its locked version from the PyTorch
index given on the command line, together with the runtime that this build of torch asks for
(triton, nvidia-* libraries); the rest of the lock is then installed exactly as pinned.

    python docker/install_python_deps.py requirements-runtime.lock \\
        --torch-index-url https://download.pytorch.org/whl/cu130

Air-gapped builds: `--download DIR` fills a wheelhouse on a machine with package access (torch
from `--torch-index-url`, or from a local wheel folder with `--torch-find-links`; packages that
ship only sources are built into wheels there), and `--wheelhouse DIR` installs from that folder
alone with no index, so an image build needs no network. `-r other.lock` lines are followed
(requirements-dev.lock includes requirements-runtime.lock).

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
# nvidia-ml-py (NVML bindings, from dvclive) is an ordinary PyPI package, not a CUDA library of torch.
TORCH_RUNTIME_PATTERN = re.compile(r"^(triton|pytorch-triton(-.+)?|nvidia-(?!ml-py$).+)$")
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


def read_lock(path: Path) -> str:
    """The lock's text with `-r FILE` / `--requirement FILE` includes inlined (relative to it)."""
    lines = []
    for line in path.read_text().splitlines():
        include = re.match(r"^\s*(?:-r|--requirement)[\s=]+(\S+)", line)
        if include:
            target = path.parent / include.group(1)
            if not target.is_file():
                raise FileNotFoundError(f"{path}: includes {include.group(1)}, which is missing")
            lines.append(read_lock(target))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


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


def torch_pins(torch_versions: dict[str, str]) -> list[str]:
    return [f"{name}=={version}" for name, version in sorted(torch_versions.items())]


def install_commands(
    torch_versions: dict[str, str], rest_file: Path, torch_index_url: str
) -> list[list[str]]:
    """The two pip runs: torch family from the torch index, then the rest of the lock."""
    pip = [sys.executable, "-m", "pip", "install"]
    commands = []
    if torch_versions:
        commands.append(pip + ["--index-url", torch_index_url] + torch_pins(torch_versions))
    commands.append(pip + ["-r", str(rest_file)])
    return commands


def wheelhouse_install_commands(
    torch_versions: dict[str, str], rest_file: Path, wheelhouse: Path
) -> list[list[str]]:
    """One pip run that reads only the wheelhouse: no index, so no network is touched."""
    return [[sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse),
             *torch_pins(torch_versions), "-r", str(rest_file)]]


def download_commands(
    torch_versions: dict[str, str], rest_file: Path, dest: Path,
    torch_index_url: str | None, torch_find_links: Path | None,
) -> list[list[str]]:
    """Fill a wheelhouse: the torch family (with the runtime its build asks for when it comes
    from a PyTorch index; alone from a local folder), then every other pin as a wheel."""
    pip = [sys.executable, "-m", "pip"]
    commands = []
    if torch_versions:
        if torch_find_links is not None:
            source = ["--no-index", "--find-links", str(torch_find_links), "--no-deps"]
        else:
            source = ["--index-url", str(torch_index_url)]
        commands.append(pip + ["download", "--dest", str(dest), "--only-binary", ":all:",
                               *source, *torch_pins(torch_versions)])
    commands.append(pip + ["wheel", "--no-deps", "--wheel-dir", str(dest), "-r", str(rest_file)])
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
    parser.add_argument("lock", type=Path, help="pinned requirements (requirements-runtime.lock)")
    parser.add_argument(
        "--torch-index-url",
        help="PyTorch wheel index: https://download.pytorch.org/whl/cpu, .../cu130, ...",
    )
    parser.add_argument("--torch-find-links", type=Path, metavar="DIR",
                        help="with --download: take the torch wheels from this local folder")
    parser.add_argument("--download", type=Path, metavar="DIR",
                        help="fill this wheelhouse instead of installing")
    parser.add_argument("--wheelhouse", type=Path, metavar="DIR",
                        help="install from this folder only, with no package index "
                             "(an empty value means: use the indexes)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="install only these locked packages"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands only")
    args = parser.parse_args(argv)

    if not args.lock.is_file():
        parser.error(
            f"{args.lock} not found: run this from the repository root, where the locks are"
        )
    try:
        torch_versions, remaining = split_lock(read_lock(args.lock))
    except FileNotFoundError as error:
        parser.error(str(error))
    if args.wheelhouse is not None and str(args.wheelhouse) in ("", "."):
        args.wheelhouse = None
    if args.only:
        try:
            pins = select_entries(remaining, args.only, args.lock)
        except ValueError as error:
            parser.error(str(error))
        run_pip([[sys.executable, "-m", "pip", "install", *pins]], args.dry_run)
        return 0
    if "torch" not in torch_versions:
        parser.error(f"{args.lock} pins no torch==VERSION line; regenerate it with `make lock`")
    if args.wheelhouse is not None:
        wheels = sorted(args.wheelhouse.glob("*.whl")) if args.wheelhouse.is_dir() else []
        if not wheels:
            parser.error(f"--wheelhouse {args.wheelhouse}: no wheels there; fill it first "
                         "(`make wheelhouse`, or this script with --download)")
    elif args.download is not None:
        if not (args.torch_index_url or args.torch_find_links):
            parser.error("--download needs --torch-index-url or --torch-find-links")
    elif not args.torch_index_url:
        parser.error("--torch-index-url is required unless --only or --wheelhouse is given")

    with tempfile.TemporaryDirectory() as scratch:
        rest_file = Path(scratch) / "requirements-without-torch.txt"
        rest_file.write_text("\n".join(remaining) + "\n")
        if args.wheelhouse is not None:
            commands = wheelhouse_install_commands(torch_versions, rest_file, args.wheelhouse)
        elif args.download is not None:
            args.download.mkdir(parents=True, exist_ok=True)
            commands = download_commands(torch_versions, rest_file, args.download,
                                         args.torch_index_url, args.torch_find_links)
        else:
            commands = install_commands(torch_versions, rest_file, args.torch_index_url)
        run_pip(commands, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
