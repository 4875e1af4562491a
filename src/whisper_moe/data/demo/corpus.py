"""The synthetic English corpus of speaker groups: synthesise a plan, split it, write manifests.

The demo needs speech with known groups and no download. Determinism: each group is
synthesised in its own fresh espeak-ng worker process, in a fixed order, so the same
arguments and seed give byte-identical WAVs and manifests, whatever the number of
workers or the calls made before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from whisper_moe.data.audio import TARGET_SAMPLE_RATE
from whisper_moe.data.demo.plan import DEFAULT_GROUPS, check_groups, plan_demo_corpus
from whisper_moe.data.manifest import SPLIT_NAMES, speaker_disjoint_split, write_manifest
from whisper_moe.fsio import write_json_atomic
from whisper_moe.progress import Progress


def make_demo_corpus(
    out_dir: str | os.PathLike,
    groups: tuple[str, ...] | list[str] = DEFAULT_GROUPS,
    speakers_per_group: int = 11,
    utterances_per_speaker: int = 12,
    seed: int = 42,
    fractions: tuple[float, float, float] | list[float] = (0.45, 0.1, 0.45),
    eval_utterances_per_speaker: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Synthesise the corpus into out_dir; return paths {"train","dev","test","report"}.

    Writes out_dir/wavs/<group>/<utterance>.wav (16 kHz mono PCM16), the three
    speaker-disjoint manifests (stratified by group) and data_report.json. The default
    split keeps as many speakers for testing as for training (5 and 5 of 11 per group):
    differences between systems are judged by a speaker bootstrap, which needs many
    test speakers more than many test utterances. eval_utterances_per_speaker (None: all)
    caps what each dev and test speaker says, which keeps evaluation short.
    """
    out_dir = Path(out_dir)
    check_groups(groups)
    fractions = tuple(fractions)
    plan = plan_demo_corpus(groups, speakers_per_group, utterances_per_speaker, seed)
    planned_splits = speaker_disjoint_split(plan, fractions=fractions, seed=seed, key="group")
    planned_splits = _cap_evaluation_speakers(planned_splits, eval_utterances_per_speaker)
    kept = {job["id"] for jobs in planned_splits.values() for job in jobs}
    plan = [job for job in plan if job["id"] in kept]  # plan order: espeak state carries over
    num_samples = synthesize_plan(plan, out_dir, workers=workers, progress=progress)
    _remove_stale_wavs(out_dir, {job["wav"] for job in plan})
    splits = {name: [_manifest_row(job, num_samples[job["id"]]) for job in jobs]
              for name, jobs in planned_splits.items()}
    paths = {name: write_manifest(out_dir / f"{name}.jsonl", splits[name]) for name in SPLIT_NAMES}
    report = _demo_report(plan, splits, groups, seed, fractions)
    report["eval_utterances_per_speaker"] = eval_utterances_per_speaker
    paths["report"] = write_json_atomic(out_dir / "data_report.json", report, sort_keys=True)
    return paths


def _cap_evaluation_speakers(splits: dict[str, list[dict]], cap: int | None) -> dict[str, list[dict]]:
    """Each dev and test speaker's first `cap` utterances (training keeps all of them)."""
    if cap is None:
        return splits
    if cap < 1:
        raise ValueError(f"eval_utterances_per_speaker must be >= 1 or None, got {cap}")
    capped = {"train": splits["train"]}
    for name in ("dev", "test"):
        said: Counter = Counter()
        capped[name] = []
        for job in splits[name]:
            said[job["speaker"]] += 1
            if said[job["speaker"]] <= cap:
                capped[name].append(job)
    return capped


def synthesize_plan(
    plan: list[dict], out_dir: Path, workers: int | None = None, progress: bool = True
) -> dict[str, int]:
    """Run one fresh worker process per group (see module docstring); {id: samples}."""
    by_group: dict[str, list[dict]] = {}
    for job in plan:
        by_group.setdefault(job["group"], []).append(job)
    workers = workers or max(1, min(len(by_group), os.cpu_count() or 1, 4))
    num_samples: dict[str, int] = {}
    lock = threading.Lock()
    with Progress("demo corpus", total=len(plan), unit="utt", enabled=progress) as bar:

        def run_group(jobs: list[dict]) -> None:
            for utt_id, samples in _run_worker(jobs, out_dir):
                with lock:
                    num_samples[utt_id] = samples
                    bar.update(1)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(run_group, jobs) for jobs in by_group.values()]:
                future.result()
    missing = [job["id"] for job in plan if job["id"] not in num_samples]
    if missing:
        raise RuntimeError(f"espeak-ng workers returned no audio for {missing[:5]}")
    return num_samples


def _run_worker(jobs: list[dict], out_dir: Path):
    """Yield (id, num_samples) as a worker process finishes each utterance."""
    request = json.dumps({"out_dir": str(out_dir), "jobs": jobs})
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryFile() as stderr_file:
        command = [sys.executable, "-m", "whisper_moe.data.demo.espeak", "--worker"]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file, env=env
        )
        try:
            process.stdin.write(request.encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # the worker died at start-up; its stderr below says why
        for line in process.stdout:
            result = json.loads(line)
            yield result["id"], result["num_samples"]
        if process.wait() != 0:
            stderr_file.seek(0)
            tail = stderr_file.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"espeak-ng worker for {jobs[0]['group']!r} failed:\n{tail}")


def _manifest_row(job: dict, num_samples: int) -> dict:
    """The manifest line of one synthesised utterance (path relative to out_dir)."""
    return {
        "id": job["id"],
        "audio_filepath": job["wav"],
        "text": job["text"],
        "duration": round(num_samples / TARGET_SAMPLE_RATE, 4),
        "speaker": job["speaker"],
        "group": job["group"],
        "voice": job["voice"],
    }


def _remove_stale_wavs(out_dir: Path, planned: set[str]) -> None:
    """Delete WAVs under out_dir/wavs left by an earlier, different run."""
    wav_root = out_dir / "wavs"
    for path in wav_root.rglob("*.wav"):
        if path.relative_to(out_dir).as_posix() not in planned:
            path.unlink()


def _demo_report(plan: list[dict], splits: dict, groups, seed: int, fractions) -> dict:
    """What was made: per split counts, durations and groups, and each speaker's voice."""
    split_of = {row["speaker"]: name for name, rows in splits.items() for row in rows}
    speakers = {}
    for job in plan:
        speakers[job["speaker"]] = {
            key: job[key]
            for key in ("group", "voice", "speech", "rate_wpm", "pitch", "pitch_range",
                        "word_gap_10ms")
        }
        speakers[job["speaker"]]["split"] = split_of[job["speaker"]]
    return {
        "source": "demo",
        "seed": seed,
        "groups": list(groups),
        "fractions": list(fractions),
        "kept": len(plan),
        "skipped": {},
        "fixed": {"resampled": 0, "downmixed": 0},
        "splits": {name: _split_summary(rows) for name, rows in splits.items()},
        "speakers": speakers,
    }


def _split_summary(rows: list[dict]) -> dict:
    """Utterances, speakers, hours and per-group counts of one split."""
    return {
        "utterances": len(rows),
        "speakers": len({row["speaker"] for row in rows}),
        "duration_s": round(sum(row["duration"] for row in rows), 3),
        "groups": dict(sorted(Counter(row["group"] for row in rows).items())),
    }
