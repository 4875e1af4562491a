"""Joint training: gate and all experts learn together (the same code for both pipelines).

Reads the train/dev manifests and, for the pretrained pipeline, a checkpoint of
pretrained gate and experts; writes `checkpoint/` (moe_config.json + safetensors),
the training log and curves, and `train_metrics.json`.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch

from whisper_moe.data.batching import UtteranceDataset
from whisper_moe.model.base import decoder_prefix_ids
from whisper_moe.model.io import build_moe, load_moe_weights, moe_config_from_params, save_moe
from whisper_moe.model.moe import MoEConfig
from whisper_moe.plots import plot_training_curves
from whisper_moe.stages.common import effective_epochs, mode_rows, special_ids, write_json
from whisper_moe.training import checkpointing
from whisper_moe.training.runtime import StopRequest, resolve_device, seed_everything
from whisper_moe.training.trainer import Trainer, TrainSettings, write_history

log = logging.getLogger("whisper_moe.train")


class MissingNumExperts(ValueError):
    pass


def resolve_num_experts(params: dict, init_dir: str | Path | None) -> int:
    """From the pretrained checkpoint when there is one, else `model.num_experts` (required)."""
    num_experts = params["model"]["num_experts"]
    if init_dir is not None:
        pretrained = MoEConfig.load(init_dir).num_experts
        if num_experts is not None and int(num_experts) != pretrained:
            raise ValueError(
                f"{init_dir} holds {pretrained} pretrained experts but num_experts is "
                f"{num_experts}: drop --num-experts or pretrain with that many clusters"
            )
        return pretrained
    if num_experts is None:
        raise MissingNumExperts(
            "num_experts must be specified: without pretraining no clustering decides the "
            "number of experts. Add --num-experts N (e.g. --num-experts 8), or set "
            "model.num_experts in params.yaml"
        )
    if int(num_experts) < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    return int(num_experts)


def run(params: dict, train_manifest, dev_manifest, out_dir, init_dir=None, resume: bool = False,
        rank: int = 0, world_size: int = 1) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(params["train"]["device"])
    seed_everything(params["seed"])
    num_experts = resolve_num_experts(params, init_dir)
    config = moe_config_from_params(params, num_experts)
    if init_dir is not None:
        config.group_to_expert = MoEConfig.load(init_dir).group_to_expert
    model, tokenizer = build_moe(config, device, seed=params["seed"], dtype=params["model"]["dtype"])
    if init_dir is not None:
        load_moe_weights(model, init_dir)
        log.info("joint training starts from the pretrained gate and experts in %s", init_dir)

    prefix = decoder_prefix_ids(tokenizer, model.base.config)
    ids = special_ids(tokenizer)
    max_labels = min(int(params["train"]["max_label_tokens"]), model.base.config.max_target_positions)
    train_set = UtteranceDataset(mode_rows(params, train_manifest, "train"), tokenizer, prefix,
                                 ids["eot"], max_labels)
    dev_set = UtteranceDataset(mode_rows(params, dev_manifest, "dev"), tokenizer, prefix,
                               ids["eot"], max_labels)
    if len(train_set) == 0:
        raise ValueError(f"{train_manifest}: no usable training utterances")
    run_params = copy.deepcopy(params)
    run_params["train"]["epochs"] = effective_epochs(params)
    settings = TrainSettings.from_params(run_params)

    ddp_model = wrap_distributed(model, device, world_size)
    trainer = Trainer(model, train_set, settings, out_dir, device, ids["pad"], len(prefix),
                      dev_set=dev_set, rank=rank, world_size=world_size, ddp_model=ddp_model,
                      fit_gate_input=init_dir is None)  # a pretrained gate keeps its statistics
    if resume:
        trainer.resume()
    elif checkpointing.list_checkpoints(trainer.checkpoint_root):
        log.warning("%s holds checkpoints of an earlier run; starting fresh (use --resume to continue)",
                    trainer.checkpoint_root)
        for folder in checkpointing.list_checkpoints(trainer.checkpoint_root):
            checkpointing.remove_checkpoint(folder)
    log.info("training %d experts on %d utterances (%d dev) for %d epochs, %d optimizer steps on %s",
             num_experts, len(train_set), len(dev_set), settings.epochs, trainer.total_steps, device)
    started = time.perf_counter()
    with StopRequest() as stop:
        history = trainer.fit(stop)
    elapsed_s = time.perf_counter() - started

    if rank != 0:
        return {}
    _, last_mode = final_routing(params)
    model.config.routing_mode, model.config.top_k = last_mode
    checkpoint_dir = save_moe(model, out_dir / "checkpoint")
    write_history(history, out_dir / "train_log.jsonl")
    write_json(out_dir / "loss_curve.json", [h for h in history if "ce_loss" in h])  # for `dvc plots`
    plot_training_curves(history, out_dir / "training_curves.png")
    steps = [h for h in history if "ce_loss" in h]
    metrics = {
        "num_experts": num_experts,
        "train_utterances": len(train_set),
        "dev_utterances": len(dev_set),
        "skipped": {**train_set.skipped, **trainer.skipped_audio},
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
    write_json(out_dir / "train_metrics.json", metrics)
    return metrics


def final_routing(params: dict) -> tuple[str, tuple[str, int]]:
    """How the trained model routes at inference: the routing of its last epoch."""
    mode = params["routing"]["mode"]
    if mode == "soft":
        return mode, ("soft", int(params["routing"]["top_k"]))
    return mode, ("topk", int(params["routing"]["top_k"]))


def wrap_distributed(model, device: torch.device, world_size: int):
    """DistributedDataParallel around the model when torchrun started several processes."""
    if world_size <= 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
