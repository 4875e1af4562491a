"""Joint training: gate and all experts learn together (the same code for both pipelines).

Reads the train/dev manifests and, for the pretrained pipeline, a checkpoint of
pretrained gate and experts; writes `checkpoint/` (moe_config.json + safetensors),
the training log and curves, and `train_metrics.json`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from whisper_moe import artifacts
from whisper_moe.config import check_params, require
from whisper_moe.fsio import write_json_atomic
from whisper_moe.model.io import load_moe_weights
from whisper_moe.model.moe import MoEConfig
from whisper_moe.plots import plot_training_curves
from whisper_moe.stages.common import (
    build_training_model,
    fit,
    joint_training_epochs,
    save_trained,
    start_trainer,
    step_records,
    training_set,
    utterance_set,
)
from whisper_moe.training.runtime import resolve_device, seed_everything
from whisper_moe.training.trainer import TrainSettings

log = logging.getLogger("whisper_moe.train")


def resolve_num_experts(params: dict, init_dir: str | Path | None) -> int:
    """From the pretrained checkpoint when there is one, else `model.num_experts` (required)."""
    num_experts = params["model"]["num_experts"]
    if init_dir is not None:
        pretrained = MoEConfig.load(init_dir).num_experts
        if num_experts is not None and int(num_experts) != pretrained:
            raise ValueError(
                f"{init_dir} holds {pretrained} pretrained experts but model.num_experts is "
                f"{num_experts}: drop --num-experts or pretrain with that many clusters"
            )
        return pretrained
    return int(require(
        params, "model.num_experts",
        "without pretraining no clustering decides the number of experts. Add --num-experts N "
        "(e.g. --num-experts 8), or set model.num_experts in params.yaml"))


def run(params: dict, train_manifest, dev_manifest, out_dir, init_dir=None, resume: bool = False,
        rank: int = 0, world_size: int = 1, embeddings_dir=None) -> dict:
    """Train gate and experts jointly; `embeddings_dir` (the embed stage's output) spares
    encoding the training utterances it holds again for the gate-input cache."""
    params = check_params(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(params["runtime"]["device"])
    seed_everything(params["seed"])
    num_experts = resolve_num_experts(params, init_dir)
    group_to_expert = MoEConfig.load(init_dir).group_to_expert if init_dir is not None else None
    model, tokenizer = build_training_model(params, num_experts, device, group_to_expert)
    if init_dir is not None:
        load_moe_weights(model, init_dir)
        log.info("joint training starts from the pretrained gate and experts in %s", init_dir)

    train_set = training_set(params, train_manifest, tokenizer, model)
    dev_set = utterance_set(params, dev_manifest, "dev", tokenizer, model)
    run_params = copy.deepcopy(params)
    run_params["train"]["epochs"] = joint_training_epochs(params, after_pretraining=init_dir is not None)
    settings = TrainSettings.from_params(run_params)

    ddp_model = wrap_distributed(model, device, world_size)
    trainer = start_trainer(model, tokenizer, train_set, settings, out_dir, device, resume,
                            dev_set=dev_set, rank=rank, world_size=world_size, ddp_model=ddp_model,
                            fit_gate_input=init_dir is None,  # a pretrained gate keeps its statistics
                            embeddings_dir=embeddings_dir)
    log.info("training %d experts on %d utterances (%d dev) for %d epochs, %d optimizer steps on %s",
             num_experts, len(train_set), len(dev_set), settings.epochs, trainer.total_steps, device)
    history, elapsed_s = fit(trainer)

    if rank != 0:
        return {}
    checkpoint_dir = save_trained(model, history, out_dir)
    steps = step_records(history)
    write_json_atomic(out_dir / artifacts.LOSS_CURVE, steps)  # for `dvc plots`
    plot_training_curves(history, out_dir / artifacts.TRAINING_CURVES)
    metrics = {
        "num_experts": num_experts,
        "train_utterances": len(train_set),
        "dev_utterances": len(dev_set),
        "skipped": {**train_set.skipped, **trainer.skipped_audio},
        "input_validation": {"train": train_set.input_validation, "dev": dev_set.input_validation},
        "nonfinite_steps_skipped": trainer.nonfinite_total,
        "epochs": settings.epochs,
        "optimizer_steps": trainer.step,
        "final_train_loss": steps[-1]["ce_loss"] if steps else None,
        "final_dev_loss": next((h["dev_loss"] for h in reversed(history) if "dev_loss" in h), None),
        "train_time_s": elapsed_s,
        "trainable_parameters": sum(p.numel() for group in model.trainable_parameters().values()
                                    for p in group),
        "checkpoint": str(checkpoint_dir),
    }
    write_json_atomic(out_dir / artifacts.TRAIN_METRICS, metrics)
    return metrics


def wrap_distributed(model, device: torch.device, world_size: int):
    """DistributedDataParallel around the model when torchrun started several processes."""
    if world_size <= 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
