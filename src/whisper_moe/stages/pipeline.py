"""The whole pipeline on one machine, as the seed's `train_pipeline.py` ran it.

pretrained MoE: data -> embed -> cluster -> pretrain-gate -> pretrain-experts -> train -> evaluate
regular MoE (--skip-pretraining): data -> train -> evaluate.
Each finished stage leaves `<stage>/stage_done.json`; `--resume` skips those and
continues training from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from whisper_moe import artifacts, lineage, model_card
from whisper_moe.config import check_params
from whisper_moe.fsio import write_json_atomic
from whisper_moe.stages import (
    cluster,
    data,
    embed,
    evaluate,
    pretrain_experts,
    pretrain_gate,
    train,
)

log = logging.getLogger("whisper_moe.pipeline")


def run_stage(name: str, folder: Path, resume: bool, work) -> dict:
    """Run `work()` unless a resumed run finds the stage finished; record it as done."""
    marker = folder / artifacts.STAGE_DONE
    if resume and marker.exists():
        log.info("stage %s: finished earlier, skipped (--resume)", name)
        return json.loads(marker.read_text())["outputs"]
    log.info("stage %s: starting", name)
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    outputs = work()
    write_json_atomic(marker, {"stage": name, "seconds": time.perf_counter() - started,
                        "outputs": json.loads(json.dumps(outputs, default=str))})
    return outputs


def run(params: dict, output_dir: Path, skip_pretraining: bool, resume: bool = False) -> dict:
    params = check_params(params)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if skip_pretraining:
        train.resolve_num_experts(params, None)  # fail at once, before any work
    write_json_atomic(output_dir / artifacts.RUN_PARAMS, params)
    data_out = run_stage("data", output_dir / "data", resume,
                         lambda: data.run(params, output_dir / "data"))
    init_dir = embed_dir = None
    if not skip_pretraining:
        init_dir = run_pretraining(params, output_dir, data_out, resume)
        embed_dir = output_dir / "embed"  # its vectors spare training a pass of the encoder
    train_out = run_stage("train", output_dir / "train", resume, lambda: train.run(
        params, data_out["train"], data_out["dev"], output_dir / "train", init_dir=init_dir,
        resume=resume, embeddings_dir=embed_dir))
    eval_out = run_stage("evaluate", output_dir / "evaluate", resume, lambda: evaluate.run(
        params, checkpoint_dir=train_out["checkpoint"], test_manifest=data_out["test"],
        out_dir=output_dir / "evaluate", train_dir=output_dir / "train"))
    describe_model(params, output_dir, Path(train_out["checkpoint"]), eval_out,
                   "regular" if skip_pretraining else "pretrained")
    summary = {
        "output_dir": str(output_dir),
        "checkpoint": train_out["checkpoint"],
        "test_wer": eval_out.get("moe", {}).get("wer"),
        "base_test_wer": eval_out.get("base", {}).get("wer"),
        "report": str(output_dir / "evaluate" / artifacts.EVALUATION_REPORT),
    }
    write_json_atomic(output_dir / artifacts.RUN_SUMMARY, summary)
    log.info("done: test WER %s (base %s); report %s", summary["test_wer"], summary["base_test_wer"],
             summary["report"])
    return summary


def describe_model(params: dict, output_dir: Path, checkpoint: Path, evaluation: dict,
                   pipeline: str) -> None:
    """lineage.json and the model card (README.md) beside the checkpoint's weights."""
    made = lineage.build(params, lineage.manifests_data(output_dir / "data", params["data"]["source"]),
                         run_id=output_dir.resolve().name, pipeline=pipeline,
                         base_model=evaluation.get("base_model"))
    lineage.write(checkpoint, made)
    model_card.write(checkpoint, evaluation, made)


def run_pretraining(params: dict, output_dir: Path, data_out: dict, resume: bool) -> Path:
    """embed -> cluster -> pretrain-gate -> pretrain-experts; returns the init checkpoint.

    With --num-experts (model.num_experts) the clustering makes exactly that many
    clusters, one per expert; without it the clustering chooses k by silhouette.
    """
    embed_dir, cluster_dir = output_dir / "embed", output_dir / "cluster"
    gate_dir, experts_dir = output_dir / "pretrain_gate", output_dir / "pretrain_experts"
    run_stage("embed", embed_dir, resume,
              lambda: embed.run(params, data_out["train"], embed_dir, resume=resume))
    run_stage("cluster", cluster_dir, resume, lambda: cluster.run(params, embed_dir, cluster_dir))
    run_stage("pretrain_gate", gate_dir, resume,
              lambda: pretrain_gate.run(params, embed_dir, cluster_dir, gate_dir))
    outputs = run_stage("pretrain_experts", experts_dir, resume, lambda: pretrain_experts.run(
        params, data_out["train"], cluster_dir, gate_dir, experts_dir, resume=resume,
        embeddings_dir=embed_dir))
    return Path(outputs["checkpoint"])
