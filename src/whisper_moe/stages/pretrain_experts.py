"""Expert pretraining: every expert learns on the utterances the pretrained gate sends it.

All training utterances are embedded once (the frozen base's pooled encoder output,
the gate's input; taken from the embed stage's output where it holds them), routed to one expert each by the pretrained gate's argmax, and
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
import logging
from pathlib import Path

import numpy as np
import torch

from whisper_moe import artifacts
from whisper_moe.config import check_params
from whisper_moe.fsio import write_json_atomic
from whisper_moe.model.moe import WhisperMoE
from whisper_moe.stages.common import (
    build_training_model,
    fit,
    save_trained,
    start_trainer,
    step_records,
    training_set,
)
from whisper_moe.training.runtime import mixed_precision, resolve_device, seed_everything
from whisper_moe.training.trainer import TrainSettings, compute_pooled_cache

log = logging.getLogger("whisper_moe.pretrain_experts")


def load_pretrained_gate(model: WhisperMoE, gate_dir) -> None:
    """Put the pretrain-gate stage's weights into the model's gate, checking the shapes."""
    state, config = artifacts.load_gate_state(gate_dir)
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
                       resume: bool, embeddings_dir=None) -> torch.Tensor:
    """Expert per training utterance; a resumed run reuses `assignments.jsonl` (same data), and
    the gate inputs come from the embed stage's output (`embeddings_dir`) where it holds them."""
    saved = artifacts.load_assignments(out_dir) if resume else None
    if saved is not None and [s["id"] for s in saved] == [row["id"] for row in dataset.rows]:
        log.info("expert assignments reused from %s", out_dir / artifacts.EXPERT_ASSIGNMENTS)
        return torch.tensor([s["expert"] for s in saved], dtype=torch.long)
    pooled = compute_pooled_cache(model, dataset, device, batch_size, amp_dtype,
                                  desc="routing embeddings", embeddings_dir=embeddings_dir)
    experts = gate_assignments(model, pooled)
    artifacts.save_assignments(out_dir, dataset.rows, experts.tolist())
    return experts


def group_expert_table(rows: list[dict], experts: torch.Tensor, num_experts: int) -> dict[str, list[int]]:
    table: dict[str, list[int]] = {}
    for row, expert in zip(rows, experts.tolist()):
        table.setdefault(row.get("group", ""), [0] * num_experts)[int(expert)] += 1
    return dict(sorted(table.items()))


def run(params: dict, train_manifest, cluster_dir, gate_dir, out_dir, resume: bool = False,
        embeddings_dir=None) -> dict:
    """Pretrain every expert; `embeddings_dir` (the embed stage's output) spares encoding the
    utterances it holds again."""
    params = check_params(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(params["runtime"]["device"])
    seed_everything(int(params["seed"]))
    _, soft_labels, cluster_report = artifacts.load_cluster_outputs(cluster_dir)
    num_experts = int(soft_labels.shape[1])
    model, tokenizer = build_training_model(params, num_experts, device,
                                            cluster_report.get("group_to_expert"))
    load_pretrained_gate(model, gate_dir)

    train_set = training_set(params, train_manifest, tokenizer, model)
    run_params = copy.deepcopy(params)
    run_params["train"]["weight_decay"] = 0.0  # see the module docstring
    settings = TrainSettings.from_params(run_params, section="pretrain_experts")
    amp_dtype, _ = mixed_precision(device, settings.precision)
    experts = routed_assignments(model, train_set, device, settings.batch_size * 2, amp_dtype, out_dir,
                                  resume, embeddings_dir)
    per_expert = np.bincount(experts.numpy(), minlength=num_experts).tolist()
    idle = [e for e, count in enumerate(per_expert) if count == 0]
    if idle:
        log.warning("experts %s receive no utterances and stay at their initialisation", idle)
    log.info("utterances per expert: %s", per_expert)

    trainer = start_trainer(model, tokenizer, train_set, settings, out_dir, device, resume,
                            forced_expert=experts)
    history, elapsed_s = fit(trainer)

    checkpoint_dir = save_trained(model, history, out_dir)
    steps = step_records(history)
    metrics = {
        "num_experts": num_experts,
        "train_utterances": len(train_set),
        "utterances_per_expert": per_expert,
        "experts_without_utterances": idle,
        "group_expert_table": group_expert_table(train_set.rows, experts, num_experts),
        "group_to_expert": model.config.group_to_expert,
        "epochs": settings.epochs,
        "optimizer_steps": trainer.step,
        "first_train_loss": steps[0]["ce_loss"] if steps else None,
        "final_train_loss": steps[-1]["ce_loss"] if steps else None,
        "skipped": {**train_set.skipped, **trainer.skipped_audio},
        "input_validation": train_set.input_validation,
        "train_time_s": elapsed_s,
        "checkpoint": str(checkpoint_dir),
    }
    write_json_atomic(out_dir / artifacts.PRETRAIN_EXPERTS_METRICS, metrics)
    return metrics
