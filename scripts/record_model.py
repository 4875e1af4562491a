"""Version a published run folder by content in this repository's DVC remote, or check it.

    python scripts/record_model.py record --run-uri s3://bucket/runs/<run> --dest models/regular
    python scripts/record_model.py check  --run-uri s3://bucket/runs/<run> --dest models/regular

`record` downloads the run folder the publish-model task wrote (model/ with weights,
lineage.json and README.md; metrics.json, report.html, params.yaml, pointer.json) into
--dest, runs `dvc add` and `dvc push`, and prints the files to commit (<dest>.dvc and the
.gitignore beside it). The .dvc file holds the folder's md5, so `git checkout <rev> &&
dvc pull` restores exactly these bytes wherever the published copy goes later; the
remote should have `verify = true`, which makes `dvc pull` re-hash what it downloads
and refuse objects overwritten in the bucket.

`check` compares the published folder in S3 with the recorded copy (pulled when
missing) file by file and exits 1 naming every file that differs: weights overwritten
in the bucket after the model was accepted show up here.

S3 credentials and endpoint come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
AWS_ENDPOINT_URL, for the download and for DVC alike.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from whisper_moe import storage
from whisper_moe.fsio import sha256_of


def dvc(*args: str) -> None:
    """Run dvc in the current repository; its own error message reaches the log."""
    subprocess.run([sys.executable, "-m", "dvc", *args], check=True)


def remote_verifies() -> bool:
    """Whether the default DVC remote has `verify = true`: `dvc pull` then re-hashes each
    downloaded object and refuses one whose bytes no longer match its name."""
    def setting(name: str) -> str:
        found = subprocess.run([sys.executable, "-m", "dvc", "config", name], capture_output=True,
                               text=True, check=False)
        return found.stdout.strip() if found.returncode == 0 else ""

    remote = setting("core.remote")
    return bool(remote) and setting(f"remote.{remote}.verify").lower() == "true"


def record(run_uri: str, dest: Path) -> list[Path]:
    """Download run_uri into dest (replacing it), dvc add and push; returns the files to commit."""
    if not remote_verifies():
        print("warning: the default DVC remote lacks `verify = true`, so `dvc pull` would restore "
              "an object overwritten in the remote without noticing; set it with `dvc remote "
              "modify <remote> verify true` and commit .dvc/config", file=sys.stderr)
    staging = dest.with_name(f".{dest.name}.download")
    shutil.rmtree(staging, ignore_errors=True)
    files = storage.download_prefix(run_uri, staging)
    if not any(path.name.endswith(".safetensors") for path in files):
        shutil.rmtree(staging)
        raise SystemExit(f"{run_uri}: holds no .safetensors weights ({len(files)} files); "
                         "give the run folder the publish-model task wrote (pointer.json's run_uri)")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    dvc("add", "--quiet", str(dest))
    dvc("push", "--quiet", f"{dest}.dvc")
    return [Path(f"{dest}.dvc"), dest.parent / ".gitignore"]


def differences(published: Path, recorded: Path) -> list[str]:
    """Relative paths whose bytes differ, or that exist on one side only."""
    def hashes(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): sha256_of(p) for p in root.rglob("*") if p.is_file()}

    new, old = hashes(published), hashes(recorded)
    return sorted(name for name in set(new) | set(old) if new.get(name) != old.get(name))


def check(run_uri: str, dest: Path) -> int:
    if not dest.exists():
        dvc("pull", "--quiet", f"{dest}.dvc")
    with tempfile.TemporaryDirectory(prefix="published-") as folder:
        storage.download_prefix(run_uri, folder)
        changed = differences(Path(folder), dest)
    if changed:
        print(f"CHANGED: {run_uri} no longer holds the recorded model ({dest}.dvc): {', '.join(changed)}")
        return 1
    print(f"unchanged: {run_uri} holds the bytes recorded in {dest}.dvc")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["record", "check"])
    parser.add_argument("--run-uri", required=True, help="s3://... of the published run folder")
    parser.add_argument("--dest", type=Path, required=True, help="folder in this repository, e.g. models/regular")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.run_uri, args.dest)
    for path in record(args.run_uri, args.dest):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
