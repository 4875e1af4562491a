"""Embed stage: the gate's input for a stratified sample of the training audio.

Each utterance becomes the mean of the frozen base encoder's output over the
positions that saw real audio (padding excluded): the same function the gate uses
(`WhisperMoE.pooled_embeddings`), so clusters and the pretrained gate see exactly
what joint training routes on. Batched, in `runtime.precision` (mixed: bf16 on a GPU),
log-mel on the device, and only the `[d]` mean kept per utterance (the seed kept 1500 x d
floats each).

Writes (through `whisper_moe.artifacts`) `embeddings.npy` (float32 [N, d]), `index.jsonl` (id, group, speaker,
audio_filepath, one line per row of the array) and `embed_report.json`. Work is
saved in chunks under `partial/`, so `--resume` after a crash or a preempted pod
continues where it stopped and gives the same array.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from whisper_moe import artifacts
from whisper_moe.config import check_params
from whisper_moe.data.manifest import stratified_sample
from whisper_moe.embedding import embedding_dtype, pooled_embedding_batches
from whisper_moe.fsio import atomic_file, write_json_atomic
from whisper_moe.model.base import load_base_model
from whisper_moe.progress import Progress
from whisper_moe.stages.common import mode_rows
from whisper_moe.training.pooled_reuse import pooling_signature
from whisper_moe.training.runtime import StopRequest, TrainingInterrupted, resolve_device

log = logging.getLogger("whisper_moe.embed")

PARTIAL_DIR = "partial"
PLAN_NAME = "plan.json"
UTTERANCES_PER_CHUNK = 1024


# ----------------------------------------------------------------------------- chunks


def sample_rows(params: dict, manifest) -> list[dict]:
    """The training rows of this run, then a stratified `embed.embedding_percent` of them."""
    rows = mode_rows(params, manifest, "train")
    percent = float(params["embed"]["embedding_percent"])
    return stratified_sample(rows, percent, int(params["seed"]))


def plan_of(params: dict, rows: list[dict], pooling: dict) -> dict:
    """What a partial result depends on: resuming with another plan would mix two runs.

    `pooling` (how the numbers were computed) also tells a later stage whether it may
    reuse these vectors as its gate inputs (`training.pooled_reuse`).
    """
    digest = hashlib.sha256("\n".join(row["id"] for row in rows).encode()).hexdigest()
    return {"base_model": str(params["model"]["base_model"]), "utterances": len(rows),
            "ids_sha256": digest, "pooling": pooling}


def chunk_path(partial: Path, start: int, end: int) -> Path:
    return partial / f"chunk_{start:09d}_{end:09d}.npz"


def write_chunk(partial: Path, start: int, end: int, positions: list[int], embeddings: list[np.ndarray],
                errors: list[tuple[int, str]], d_model: int) -> Path:
    """One finished range of the sample, written atomically (a reader never sees half)."""
    path = chunk_path(partial, start, end)
    array = np.concatenate(embeddings) if embeddings else np.zeros((0, d_model), np.float32)
    with atomic_file(path, "wb") as stream:
        np.savez(stream, embeddings=array.astype(np.float32),
                 positions=np.asarray(positions, dtype=np.int64),
                 error_positions=np.asarray([p for p, _ in errors], dtype=np.int64),
                 error_reasons=np.asarray([r for _, r in errors], dtype=str))
    return path


def read_chunks(partial: Path) -> tuple[int, list[dict]]:
    """(first sample position not yet embedded, finished chunks in order).

    Only the contiguous run of chunks from position 0 counts.
    """
    chunks = []
    for path in sorted(partial.glob("chunk_*.npz")):
        _, start, end = path.stem.split("_")
        chunks.append((int(start), int(end), path))
    done, finished = 0, []
    for start, end, path in sorted(chunks):
        if start != done:
            break
        with np.load(path, allow_pickle=False) as data:
            finished.append({key: data[key] for key in data.files})
        done = end
    return done, finished


def prepare_partial(out_dir: Path, plan: dict, resume: bool) -> Path:
    """The partial folder for this plan: kept on --resume when the plan matches, else fresh."""
    partial = out_dir / PARTIAL_DIR
    plan_path = partial / PLAN_NAME
    if resume and plan_path.exists():
        earlier = json.loads(plan_path.read_text())
        if earlier != plan:
            raise ValueError(
                f"{plan_path}: the partial embeddings were made for another sample or base model "
                f"({earlier}) than this run ({plan}); run without --resume to start over"
            )
        return partial
    if partial.exists():
        if not resume:
            log.info("%s: discarding partial embeddings of an earlier run (use --resume to continue)",
                     partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    write_json_atomic(plan_path, plan)
    return partial


# ------------------------------------------------------------------------------- stage


def run(params: dict, manifest, out_dir, resume: bool = False,
        chunk_utterances: int = UTTERANCES_PER_CHUNK) -> dict:
    """Embed a stratified sample of `manifest`; resumable chunk by chunk."""
    params = check_params(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(params, manifest)
    if not rows:
        raise ValueError(f"{manifest}: no rows to embed (embed.embedding_percent="
                         f"{params['embed']['embedding_percent']})")
    device = resolve_device(params["runtime"]["device"])
    dtype = embedding_dtype(device, params["runtime"]["precision"])
    plan = plan_of(params, rows, pooling_signature(params["model"]["base_model"], dtype, None, device))
    finished = finished_outputs(out_dir, plan) if resume else None
    if finished is not None:
        log.info("embeddings in %s are complete for this sample (--resume)", out_dir)
        return finished
    partial = prepare_partial(out_dir, plan, resume)
    start, _ = read_chunks(partial)
    if start:
        log.info("resuming embeddings at utterance %d of %d", start, len(rows))

    whisper, _ = load_base_model(params["model"]["base_model"], dtype=dtype)
    whisper.to(device).eval()
    batch_size = int(params["embed"]["batch_size"])
    chunk_utterances = max(batch_size, (int(chunk_utterances) // batch_size) * batch_size)
    started = time.perf_counter()
    embed_remaining(whisper, rows, start, partial, device, batch_size,
                    int(params["runtime"]["num_workers"]), chunk_utterances)
    elapsed_s = time.perf_counter() - started
    return assemble(out_dir, partial, rows, plan, elapsed_s, len(rows) - start, device)


def embed_remaining(whisper, rows: list[dict], start: int, partial: Path, device: torch.device,
                    batch_size: int, num_workers: int, chunk_utterances: int) -> None:
    """Embed rows[start:], writing a chunk every `chunk_utterances`; SIGTERM saves and stops."""
    d_model = whisper.config.d_model
    progress = Progress("embed", total=len(rows), initial=start, unit="utt")
    chunk_start, positions, arrays, errors = start, [], [], []
    with StopRequest() as stop:
        batches = pooled_embedding_batches(whisper, rows[start:], device, batch_size, num_workers)
        for done_in_run, batch in enumerate(batches, start=1):
            positions += [start + p for p in batch["positions"]]
            arrays.append(batch["embeddings"])
            errors += [(start + p, reason) for p, reason in batch["errors"]]
            progress.update(len(batch["positions"]) + len(batch["errors"]))
            end = min(start + done_in_run * batch_size, len(rows))
            if end - chunk_start >= chunk_utterances or end == len(rows) or stop:
                write_chunk(partial, chunk_start, end, positions, arrays, errors, d_model)
                chunk_start, positions, arrays, errors = end, [], [], []
                if stop and end < len(rows):
                    progress.close()
                    raise TrainingInterrupted(partial, stop.signal_name)
    progress.close()


def assemble(out_dir: Path, partial: Path, rows: list[dict], plan: dict, elapsed_s: float,
             embedded_now: int, device: torch.device) -> dict:
    """Concatenate the chunks into embeddings.npy + index.jsonl and report what was skipped."""
    done, chunks = read_chunks(partial)
    if done != len(rows):
        raise RuntimeError(f"{partial}: chunks cover {done} of {len(rows)} utterances; rerun with --resume")
    embeddings = np.concatenate([c["embeddings"] for c in chunks]).astype(np.float32)
    positions = np.concatenate([c["positions"] for c in chunks])
    reasons = Counter(str(r) for c in chunks for r in c["error_reasons"])
    skipped_ids = [rows[int(p)]["id"] for c in chunks for p in c["error_positions"]]
    if len(embeddings) == 0:
        raise ValueError(f"none of the {len(rows)} sampled utterances could be read: {dict(reasons)}")
    artifacts.save_embeddings(out_dir, embeddings, [rows[int(p)] for p in positions])
    report = {
        "plan": plan,
        "embeddings": len(embeddings),
        "dim": int(embeddings.shape[1]),
        "groups": dict(sorted(Counter(rows[int(p)].get("group", "") for p in positions).items())),
        "skipped": dict(reasons),
        "skipped_ids": skipped_ids[:100],
        "seconds": elapsed_s,
        "utterances_per_s": embedded_now / max(elapsed_s, 1e-9),
        "device": str(device),
    }
    write_json_atomic(out_dir / artifacts.EMBED_REPORT, report)
    shutil.rmtree(partial)
    log.info("embedded %d utterances (d=%d, %d skipped) in %.1f s", len(embeddings),
             embeddings.shape[1], sum(reasons.values()), elapsed_s)
    return outputs_of(out_dir, report)


def outputs_of(out_dir: Path, report: dict) -> dict:
    return {"embeddings": str(out_dir / artifacts.EMBEDDINGS), "index": str(out_dir / artifacts.EMBEDDING_INDEX),
            "report": str(out_dir / artifacts.EMBED_REPORT), "count": report["embeddings"],
            "dim": report["dim"]}


def finished_outputs(out_dir: Path, plan: dict) -> dict | None:
    """The outputs of an earlier run with the same plan, when complete."""
    if not artifacts.has_embeddings(out_dir):
        return None
    report = artifacts.read_json(out_dir / artifacts.EMBED_REPORT)
    return outputs_of(out_dir, report) if report.get("plan") == plan else None
