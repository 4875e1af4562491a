"""What several stages share: the rows a mode uses, tokens, and the set-up and end of MoE training.

Joint training (`stages.train`) and expert pretraining (`stages.pretrain_experts`)
build the model, its training utterances and the Trainer, run it and save the
result the same way; both call the functions here.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

from whisper_moe import artifacts
from whisper_moe.data.batching import UtteranceDataset
from whisper_moe.data.manifest import read_manifest, stratified_sample
from whisper_moe.data.validate import is_validated, validate_manifest
from whisper_moe.model.base import decoder_prefix_ids
from whisper_moe.model.io import build_moe, moe_config_from_params, save_moe
from whisper_moe.model.moe import WhisperMoE
from whisper_moe.training import checkpointing
from whisper_moe.training.runtime import StopRequest
from whisper_moe.training.trainer import Trainer, TrainSettings

log = logging.getLogger("whisper_moe.stages")


def validation_report_path(manifest: str | Path) -> Path:
    """Where the report of a stage's own validation of `manifest` is kept (named in errors)."""
    key = hashlib.sha256(str(Path(manifest).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "whisper-moe-validation" / f"{Path(manifest).stem}-{key}_report.json"


def checked_rows(params: dict, manifest: str | Path) -> tuple[list[dict], dict | None]:
    """(usable rows, validation report) of a manifest a stage is given.

    A manifest the data stage wrote (its report records the manifest's hash) is read as
    it is, with report None. Any other goes through the same validator with the same
    `data.max_skip_fraction` first, so a stage never trains or scores on empty
    transcripts, duplicate ids or unreadable audio; the skipped rows are logged by reason.
    """
    if is_validated(manifest):
        return read_manifest(manifest), None
    report_path = validation_report_path(manifest)
    with tempfile.TemporaryDirectory(prefix="whisper-moe-validate-") as scratch:
        cleaned = Path(scratch) / Path(manifest).name
        report = validate_manifest(
            manifest, cleaned, report_path,
            max_skip_fraction=float(params["data"]["max_skip_fraction"]),
            max_duration_s=float(params["data"]["max_duration_s"]), progress=False)
        rows = read_manifest(cleaned)
    log.info("%s (not from the data stage) validated: kept %d of %d, skipped %s", manifest,
             report["kept"], report["total"], report["skipped"] or "none")
    return rows, report


def mode_rows(params: dict, manifest: str | Path, split: str,
              validation: dict | None = None) -> list[dict]:
    """Rows of a manifest for this run: --data-percent on train, quick-mode caps on all.

    `validation`, when given, receives {manifest: report} for manifests validated here.
    """
    rows, report = checked_rows(params, manifest)
    if report is not None and validation is not None:
        validation[str(manifest)] = report
    if split == "train" and float(params["data"]["data_percent"]) < 100:
        rows = stratified_sample(rows, float(params["data"]["data_percent"]), params["seed"])
    if params["mode"] == "quick":
        cap_key = "max_train_utterances" if split == "train" else "max_eval_utterances"
        cap = int(params["quick"][cap_key])
        if len(rows) > cap:
            rows = stratified_sample(rows, 100.0 * cap / len(rows), params["seed"])[:cap]
    return rows


def effective_epochs(params: dict) -> int:
    return int(params["quick"]["epochs"] if params["mode"] == "quick" else params["train"]["epochs"])


def joint_training_epochs(params: dict, after_pretraining: bool) -> int:
    """Epochs of joint training. After expert pretraining its epochs count toward the
    budget (`pretrain_experts.count_toward_train_epochs`), at least one joint epoch left:
    a comparison of systems means little when one of them trained longer."""
    epochs = effective_epochs(params)
    pretraining = params["pretrain_experts"]
    if after_pretraining and pretraining["count_toward_train_epochs"]:
        epochs = max(1, epochs - int(pretraining["epochs"]))
    return epochs


def special_ids(tokenizer) -> dict[str, int]:
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    return {"eot": eot, "pad": pad}


# ----------------------------------------------------------------------------- MoE training
def build_training_model(params: dict, num_experts: int, device,
                         group_to_expert: dict | None = None) -> tuple[WhisperMoE, object]:
    """(WhisperMoE, tokenizer) with fresh experts and gate, seeded by `params["seed"]`."""
    config = moe_config_from_params(params, num_experts)
    config.group_to_expert = group_to_expert
    return build_moe(config, device, seed=int(params["seed"]), dtype=params["model"]["dtype"])


def utterance_set(params: dict, manifest, split: str, tokenizer, model: WhisperMoE) -> UtteranceDataset:
    """The mode's rows of one split as decoder targets: the forced prefix, the text, end-of-text."""
    prefix = decoder_prefix_ids(tokenizer, model.base.config)
    max_labels = min(int(params["train"]["max_label_tokens"]), model.base.config.max_target_positions)
    validation: dict = {}
    dataset = UtteranceDataset(mode_rows(params, manifest, split, validation), tokenizer, prefix,
                               special_ids(tokenizer)["eot"], max_labels)
    dataset.input_validation = validation.get(str(manifest))  # None: the data stage's manifest
    return dataset


def training_set(params: dict, manifest, tokenizer, model: WhisperMoE) -> UtteranceDataset:
    """The training utterances; none at all is an error naming the manifest."""
    dataset = utterance_set(params, manifest, "train", tokenizer, model)
    if len(dataset) == 0:
        raise ValueError(f"{manifest}: no usable training utterances")
    return dataset


def start_trainer(model: WhisperMoE, tokenizer, train_set: UtteranceDataset, settings: TrainSettings,
                  out_dir: Path, device, resume: bool, **options) -> Trainer:
    """A Trainer continued from its newest valid checkpoint (`resume`), else started fresh.

    `options` go to Trainer (dev_set, forced_expert, rank, world_size, ddp_model,
    fit_gate_input, embeddings_dir).
    """
    prefix = decoder_prefix_ids(tokenizer, model.base.config)
    trainer = Trainer(model, train_set, settings, out_dir, device, special_ids(tokenizer)["pad"],
                      len(prefix), **options)
    if resume:
        trainer.resume()
    else:
        remove_earlier_checkpoints(trainer.checkpoint_root)
    return trainer


def remove_earlier_checkpoints(root: Path) -> None:
    """A fresh run must not resume later from another run's training state."""
    earlier = checkpointing.list_checkpoints(root)
    if earlier:
        log.warning("%s holds checkpoints of an earlier run; starting fresh (use --resume to continue)",
                    root)
    for folder in earlier:
        checkpointing.remove_checkpoint(folder)


def fit(trainer: Trainer) -> tuple[list[dict], float]:
    """(history, training seconds, a resumed run's earlier ones included) of a full run;
    SIGTERM/SIGINT save a checkpoint and stop it."""
    with StopRequest() as stop:
        history = trainer.fit(stop)
    return history, trainer.training_seconds()


def save_trained(model: WhisperMoE, history: list[dict], out_dir: Path) -> Path:
    """The model checkpoint and the training log of a finished run; returns the checkpoint."""
    checkpoint_dir = save_moe(model, out_dir / artifacts.MODEL_CHECKPOINT)
    artifacts.save_train_log(out_dir, history)
    return checkpoint_dir


def step_records(history: list[dict]) -> list[dict]:
    """The per-optimizer-step records of a training history."""
    return [record for record in history if "ce_loss" in record]
