"""Expert pretraining: every expert learns on the utterances the pretrained gate sends it.

All training utterances are embedded once (the frozen base's pooled encoder output,
the gate's input), routed to one expert each by the pretrained gate's argmax, and
then all experts train in ONE pass over the data: the stacked experts with hard,
forced routing, so each utterance updates only its own expert's LoRA blocks.

Weight decay is off here: decoupled decay shrinks every expert's A matrix at every
step, including experts that received no utterance in that step (or at all); with
it off an expert changes only through its own utterances' gradients.

Writes `checkpoint/` (a full MoE checkpoint: pretrained gate and experts, with
`group_to_expert` from the cluster table for oracle routing), `assignments.jsonl`
(id, group, expert), `pretrain_experts_metrics.json`, `train_log.jsonl`, and
`checkpoints/` (resumable training state: `--resume` continues from it).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from whisper_moe.config import check_params
from whisper_moe.data.batching import UtteranceDataset
from whisper_moe.model.base import decoder_prefix_ids
from whisper_moe.model.io import build_moe, moe_config_from_params, save_moe
from whisper_moe.model.moe import WhisperMoE
from whisper_moe.stages.cluster import load_cluster_outputs
from whisper_moe.stages.common import mode_rows, special_ids, write_json
from whisper_moe.stages.pretrain_gate import load_gate_state
from whisper_moe.training import checkpointing
from whisper_moe.training.runtime import (
    StopRequest,
    mixed_precision,
    resolve_device,
    seed_everything,
)
from whisper_moe.training.trainer import Trainer, TrainSettings, compute_pooled_cache, write_history

log = logging.getLogger("whisper_moe.pretrain_experts")

ASSIGNMENTS_NAME = "assignments.jsonl"
METRICS_NAME = "pretrain_experts_metrics.json"


def load_pretrained_gate(model: WhisperMoE, gate_dir) -> None:
    """Put the pretrain-gate stage's weights into the model's gate, checking the shapes."""
    state, config = load_gate_state(gate_dir)
    d_model, experts = model.base.config.d_model, model.config.num_experts
    if config["input_dim"] != d_model or config["num_experts"] != experts:
        raise ValueError(
            f"{gate_dir}: gate for d={config['input_dim']}, {config['num_experts']} experts, but the "
            f"model has d={d_model}, {experts} experts; rerun embed/cluster/pretrain-gate with "
            "this base model"
        )
    if config["hidden_dim"] != model.config.gate_hidden:
        raise ValueError(f"{gate_dir}: gate hidden size {config['hidden_dim']} but "
                         f"model.gate_hidden={model.config.gate_hidden}; rerun pretrain-gate")
    model.gate.load_state_dict({k: v.to(model.gate.net[0].weight.device) for k, v in state.items()})


@torch.no_grad()
def gate_assignments(model: WhisperMoE, pooled: torch.Tensor) -> torch.Tensor:
    """Each utterance's expert: the pretrained gate's argmax (hard routing)."""
    device = model.gate.net[0].weight.device
    logits = model.gate(pooled.to(device, model.gate.net[0].weight.dtype))
    return logits.argmax(-1).cpu()


def routed_assignments(model, dataset, device, batch_size, amp_dtype, out_dir: Path,
                       resume: bool) -> torch.Tensor:
    """Expert per training utterance; a resumed run reuses `assignments.jsonl` (same data)."""
    path = out_dir / ASSIGNMENTS_NAME
    ids = [row["id"] for row in dataset.rows]
    if resume and path.exists():
        saved = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if [s["id"] for s in saved] == ids:
            log.info("expert assignments reused from %s", path)
            return torch.tensor([s["expert"] for s in saved], dtype=torch.long)
    pooled = compute_pooled_cache(model, dataset, device, batch_size, amp_dtype,
                                  desc="routing embeddings")
    experts = gate_assignments(model, pooled)
    lines = [json.dumps({"id": row["id"], "group": row.get("group", ""), "expert": int(e)})
             for row, e in zip(dataset.rows, experts.tolist())]
    path.write_text("".join(line + "\n" for line in lines))
    return experts


def group_expert_table(rows: list[dict], experts: torch.Tensor, num_experts: int) -> dict[str, list[int]]:
    table: dict[str, list[int]] = {}
    for row, expert in zip(rows, experts.tolist()):
        table.setdefault(row.get("group", ""), [0] * num_experts)[int(expert)] += 1
    return dict(sorted(table.items()))


def run(params: dict, train_manifest, cluster_dir, gate_dir, out_dir, resume: bool = False) -> dict:
    params = check_params(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(params["runtime"]["device"])
    seed_everything(int(params["seed"]))
    _, soft_labels, cluster_report = load_cluster_outputs(cluster_dir)
    num_experts = int(soft_labels.shape[1])
    config = moe_config_from_params(params, num_experts)
    config.group_to_expert = cluster_report.get("group_to_expert")
    model, tokenizer = build_moe(config, device, seed=int(params["seed"]), dtype=params["model"]["dtype"])
    load_pretrained_gate(model, gate_dir)

    prefix = decoder_prefix_ids(tokenizer, model.base.config)
    ids = special_ids(tokenizer)
    max_labels = min(int(params["train"]["max_label_tokens"]), model.base.config.max_target_positions)
    train_set = UtteranceDataset(mode_rows(params, train_manifest, "train"), tokenizer, prefix,
                                 ids["eot"], max_labels)
    if len(train_set) == 0:
        raise ValueError(f"{train_manifest}: no usable training utterances")
    run_params = copy.deepcopy(params)
    run_params["train"]["weight_decay"] = 0.0  # see the module docstring
    settings = TrainSettings.from_params(run_params, section="pretrain_experts")
    amp_dtype, _ = mixed_precision(device, settings.precision)
    experts = routed_assignments(model, train_set, device, settings.batch_size * 2, amp_dtype, out_dir,
                                  resume)
    per_expert = np.bincount(experts.numpy(), minlength=num_experts).tolist()
    idle = [e for e, count in enumerate(per_expert) if count == 0]
    if idle:
        log.warning("experts %s receive no utterances and stay at their initialisation", idle)
    log.info("utterances per expert: %s", per_expert)

    trainer = Trainer(model, train_set, settings, out_dir, device, ids["pad"], len(prefix),
                      forced_expert=experts)
    if resume:
        trainer.resume()
    else:
        for folder in checkpointing.list_checkpoints(trainer.checkpoint_root):
            shutil.rmtree(folder)
    started = time.perf_counter()
    with StopRequest() as stop:
        history = trainer.fit(stop)
    elapsed_s = time.perf_counter() - started

    checkpoint_dir = save_moe(model, out_dir / "checkpoint")
    write_history(history, out_dir / "train_log.jsonl")
    steps = [h for h in history if "ce_loss" in h]
    metrics = {
        "num_experts": num_experts,
        "train_utterances": len(train_set),
        "utterances_per_expert": per_expert,
        "experts_without_utterances": idle,
        "group_expert_table": group_expert_table(train_set.rows, experts, num_experts),
        "group_to_expert": config.group_to_expert,
        "epochs": settings.epochs,
        "optimizer_steps": trainer.step,
        "first_train_loss": steps[0]["ce_loss"] if steps else None,
        "final_train_loss": steps[-1]["ce_loss"] if steps else None,
        "skipped": {**train_set.skipped, **trainer.skipped_audio},
        "train_time_s": elapsed_s,
        "checkpoint": str(checkpoint_dir),
    }
    write_json(out_dir / METRICS_NAME, metrics)
    return metrics
