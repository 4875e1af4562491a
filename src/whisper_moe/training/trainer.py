"""The joint-training loop: gate and every expert learn together, resumable step by step.

Routing is balanced per optimizer step, not per micro-batch: with per-utterance routing
a micro-batch of a few utterances cannot be balanced without forcing every utterance
towards the uniform mixture. The router inputs of all micro-batches of a step (the
cached gate embedding and the noise drawn) are kept, and at the step the Switch/GShard
loss `E * sum_i f_i * P_i` over the whole step, on every process, adds its gradient to
the gate's (`Trainer.balance_step`).

Also serves expert pretraining: with `forced_expert` each utterance is routed to one
expert (its cluster), so every expert trains on its own cluster in one pass over the data.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, Subset

from whisper_moe import artifacts
from whisper_moe.data.batching import UtteranceDataset, collate_utterances
from whisper_moe.data.features import whisper_features
from whisper_moe.errors import WhisperMoeError
from whisper_moe.model.gate import (
    at_least_float32,
    curriculum_routing,
    dispatch_mask,
    switch_load_balance,
)
from whisper_moe.model.moe import WhisperMoE
from whisper_moe.progress import Progress, track
from whisper_moe.training import checkpointing
from whisper_moe.training.live import LiveMetrics
from whisper_moe.training.pooled_reuse import (
    REUSE_ATOL,
    REUSE_RTOL,
    KnownPooled,
    pooling_signature,
    reusable_pooled,
)
from whisper_moe.training.runtime import (
    StopRequest,
    TrainingInterrupted,
    autocast,
    json_rng_state,
    mixed_precision,
    restore_rng_state,
    rng_state,
)

log = logging.getLogger("whisper_moe.train")

# routing.balance_bias_rate when null and the gate starts untrained: chosen on the demo
# (benchmarks/results/routing_symmetry.md), where 0 leaves experts nobody's first choice.
AUTO_BALANCE_BIAS_RATE = 0.1


class NonFiniteLoss(WhisperMoeError, RuntimeError):
    """Several steps in a row produced NaN/inf: the run is diverging, not unlucky."""


@dataclass
class TrainSettings:
    """The training section of params (and the runtime section), flattened for the loop."""

    epochs: int
    batch_size: int
    gradient_accumulation_steps: int
    lr: float
    gate_lr: float
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    precision: str
    num_workers: int
    eval_every_n_epochs: int
    save_every_n_epochs: int
    keep_checkpoints: int
    max_nonfinite_in_a_row: int
    seed: int
    routing: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict, section: str = "train") -> TrainSettings:
        train = params["train"]
        own = params.get(section, {}) if section != "train" else {}
        return cls(
            epochs=int(own.get("epochs", train["epochs"])),
            batch_size=int(own.get("batch_size", train["batch_size"])),
            gradient_accumulation_steps=int(train["gradient_accumulation_steps"]),
            lr=float(own.get("lr", train["lr"])),
            gate_lr=float(train["gate_lr"]),
            weight_decay=float(train["weight_decay"]),
            warmup_ratio=float(train["warmup_ratio"]),
            max_grad_norm=float(train["max_grad_norm"]),
            precision=str(params["runtime"]["precision"]),
            num_workers=int(params["runtime"]["num_workers"]),
            eval_every_n_epochs=int(train["eval_every_n_epochs"]),
            save_every_n_epochs=int(train["save_every_n_epochs"]),
            keep_checkpoints=int(train["keep_checkpoints"]),
            max_nonfinite_in_a_row=int(train["max_nonfinite_in_a_row"]),
            seed=int(params["seed"]),
            routing=dict(params["routing"]),
        )


class EpochOrder(Sampler):
    """A seeded permutation per epoch, started at an offset: the data order of a resume."""

    def __init__(self, size: int, seed: int, epoch: int, start_batch: int, batch_size: int,
                 rank: int = 0, world_size: int = 1):
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(size, generator=generator).tolist()
        if world_size > 1:  # every process gets the same number of equal batches
            stride = batch_size * world_size
            order += order[: (-len(order)) % stride]
        self.order = order[start_batch * batch_size * world_size:]
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size

    def __iter__(self):
        stride = self.batch_size * self.world_size
        for start in range(0, len(self.order), stride):
            block = self.order[start : start + stride]
            yield from block[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        return len(self.order)


def batches_per_epoch(size: int, batch_size: int, world_size: int = 1) -> int:
    return math.ceil(size / (batch_size * world_size))


def steps_per_epoch(size: int, settings: TrainSettings, world_size: int = 1) -> int:
    return math.ceil(batches_per_epoch(size, settings.batch_size, world_size)
                     / settings.gradient_accumulation_steps)


def linear_warmup_decay(total_steps: int, warmup_ratio: float):
    """LR multiplier: linear warm-up, then linear decay to zero at the last step."""
    warmup = max(1, int(round(total_steps * warmup_ratio)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


@torch.no_grad()
def compute_pooled_cache(model: WhisperMoE, dataset: UtteranceDataset, device: torch.device,
                         batch_size: int, amp_dtype, desc: str = "gate embeddings",
                         embeddings_dir: str | Path | None = None) -> torch.Tensor:
    """Pooled frozen-base encoder output for every utterance, computed once.

    The base is frozen, so the gate's input never changes during training; computing
    it once replaces a second encoder pass per step. With `embeddings_dir` (the embed
    stage's output) the utterances it holds are taken from it, when it pooled the same
    way (`pooled_reuse`), and only the others are encoded.
    """
    pooled = torch.zeros(len(dataset), model.base.config.d_model)
    was_training = model.training
    model.eval()
    known = embedded_before(model, dataset, device, amp_dtype, embeddings_dir)
    if known is None:
        encode_pooled(pooled, model, dataset, range(len(dataset)), device, batch_size, amp_dtype, desc)
    else:
        fill_with_known(pooled, known, model, dataset, device, batch_size, amp_dtype, desc)
    model.train(was_training)
    return pooled


def embedded_before(model: WhisperMoE, dataset: UtteranceDataset, device: torch.device, amp_dtype,
                    embeddings_dir: str | Path | None) -> KnownPooled | None:
    """The embed stage's vectors of this dataset, when it pooled as this model does here."""
    if embeddings_dir is None:
        return None
    signature = pooling_signature(model.config.base_model, next(model.base.parameters()).dtype,
                                  amp_dtype, device)
    return reusable_pooled(embeddings_dir, dataset.rows, signature, model.base.config.d_model)


def fill_with_known(pooled: torch.Tensor, known: KnownPooled, model: WhisperMoE,
                    dataset: UtteranceDataset, device: torch.device, batch_size: int, amp_dtype,
                    desc: str) -> None:
    """Known rows copied, the others encoded, plus one known row encoded again as the proof
    that both pooled alike; when it disagrees every known row is encoded after all."""
    pooled[known.positions] = known.vectors
    probe = int(known.positions[0])
    pooled[probe] = 0.0  # an unreadable probe stays zero and fails the check
    todo = torch.ones(len(dataset), dtype=torch.bool)
    todo[known.positions] = False
    todo[probe] = True
    encode_pooled(pooled, model, dataset, todo.nonzero().flatten().tolist(), device, batch_size,
                  amp_dtype, desc)
    if not torch.allclose(pooled[probe], known.vectors[0], rtol=REUSE_RTOL, atol=REUSE_ATOL):
        log.warning("utterance %s pools differently than in the embed output; encoding every "
                    "utterance", dataset.rows[probe]["id"])
        pooled[known.positions[1:]] = 0.0  # as computed: an unreadable utterance stays zero
        encode_pooled(pooled, model, dataset, known.positions[1:].tolist(), device, batch_size,
                      amp_dtype, desc)


def encode_pooled(pooled: torch.Tensor, model: WhisperMoE, dataset: UtteranceDataset, indices,
                  device: torch.device, batch_size: int, amp_dtype, desc: str) -> None:
    """Write the pooled embedding of dataset rows `indices` into `pooled` (unreadable: left)."""
    indices = list(indices)
    if not indices:
        return
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        collate_fn=lambda items: collate_utterances(items, 0, 1),
                        generator=torch.Generator().manual_seed(0))
    for batch in track(loader, desc, unit="batch"):
        if batch["size"] == 0:
            continue
        features, frames = batch_features(model, batch, device)
        with autocast(device, amp_dtype):
            embedding = model.pooled_embeddings(features, frames)
        pooled[batch["index"]] = embedding.float().cpu()


def batch_features(model: WhisperMoE, batch: dict, device: torch.device):
    """(log-mel, valid frames) of a batch, computed on the training device."""
    return whisper_features(batch["audio"], batch["num_samples"], model.base.config, device,
                            next(model.base.parameters()).dtype)


def progress_fields(record: dict) -> dict:
    """What a progress line shows of an optimizer step's record."""
    fields = {"loss": record.get("ce_loss"), "lr": record.get("lr"),
              "gate entropy": record.get("gate_entropy")}
    if record.get("dispatch") is not None:
        fields["dispatch"] = record["dispatch"]
    return fields


class Trainer:
    """Runs epochs of joint training with exact, signal-safe checkpoint/resume."""

    def __init__(self, model: WhisperMoE, train_set: UtteranceDataset, settings: TrainSettings,
                 out_dir: Path, device: torch.device, pad_token_id: int, prefix_length: int,
                 dev_set: UtteranceDataset | None = None, forced_expert: torch.Tensor | None = None,
                 rank: int = 0, world_size: int = 1, ddp_model=None, fit_gate_input: bool = True,
                 embeddings_dir: str | Path | None = None):
        self.model = model
        self.train_set = train_set
        self.dev_set = dev_set
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.device = device
        self.pad_token_id = pad_token_id
        self.prefix_length = prefix_length
        self.forced_expert = forced_expert
        self.fit_gate_input = fit_gate_input and forced_expert is None
        self.embeddings_dir = embeddings_dir  # the embed stage's output: training gate inputs reused
        self.rank = rank
        self.world_size = world_size
        self.forward_model = ddp_model or model
        self.amp_dtype, needs_scaler = mixed_precision(device, settings.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=needs_scaler)
        groups = model.trainable_parameters()
        param_groups = [{"params": groups["experts"], "lr": settings.lr, "name": "experts"}]
        if forced_expert is None:
            param_groups.append({"params": groups["gate"], "lr": settings.gate_lr, "name": "gate"})
        self.optimizer = torch.optim.AdamW(param_groups, weight_decay=settings.weight_decay)
        self.steps_per_epoch = steps_per_epoch(len(train_set), settings, world_size)
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_warmup_decay(max(self.total_steps, 1), settings.warmup_ratio)
        )
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.skipped_audio: dict[str, int] = {}
        self.history: list[dict] = []
        self.pooled_train: torch.Tensor | None = None
        self.pooled_dev: torch.Tensor | None = None
        self.pending_rng: tuple | None = None
        self.seconds_before_resume = 0.0  # training time of the runs this one resumed
        self.fit_started: float | None = None
        self.step_router_inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- state -------------------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.out_dir / artifacts.RESUMABLE_CHECKPOINTS

    def training_seconds(self) -> float:
        """Wall time spent training up to now, over every run that led to this state: a
        resumed run adds its own time to what the checkpoint recorded (the work a stop
        threw away after the last checkpoint is not counted; it is done again)."""
        running = time.perf_counter() - self.fit_started if self.fit_started is not None else 0.0
        return self.seconds_before_resume + running

    def save(self, rank_rng: list | None = None) -> Path:
        json_state = {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "nonfinite_total": self.nonfinite_total, "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "skipped_audio": self.skipped_audio, "history": self.history,
            "rng": json_rng_state(), "total_steps": self.total_steps,
            "training_seconds": self.training_seconds(),
        }
        torch_state = {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(),
        }
        if rank_rng is not None:
            torch_state["rank_rng"] = [torch_rng for torch_rng, _ in rank_rng]
            json_state["rank_rng"] = [python_rng for _, python_rng in rank_rng]
        return checkpointing.write_checkpoint(
            self.checkpoint_root, self.step, self.model.trainable_state_dict(),
            torch_state, json_state, self.settings.keep_checkpoints,
        )

    def global_micro_records(self, micro: list[dict]) -> list[dict]:
        """Logged losses averaged over processes, so every rank logs the global batch."""
        keys = ("ce_loss", "z_loss", "gate_entropy")
        values = torch.tensor([[m[k] for k in keys] for m in micro], device=self.device)
        torch.distributed.all_reduce(values)
        values /= self.world_size
        return [{**m, **dict(zip(keys, row.tolist()))} for m, row in zip(micro, values)]

    def save_on_rank_zero(self) -> Path:
        """Only rank 0 writes (with every rank's random state); the others wait so nobody
        reads a checkpoint mid-write."""
        folder = self.checkpoint_root / f"{checkpointing.PREFIX}{self.step:08d}"
        rank_rng = None
        if self.world_size > 1:
            rank_rng = [None] * self.world_size
            torch.distributed.all_gather_object(rank_rng, (rng_state(), json_rng_state()))
        if self.rank == 0:
            folder = self.save(rank_rng)
        if self.world_size > 1:
            torch.distributed.barrier()
        return folder

    def agreed_stop(self, stop: StopRequest) -> bool:
        """A stop seen by any process stops all of them at the same step."""
        if self.world_size == 1:
            return bool(stop)
        flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def resume(self) -> bool:
        """Load the newest valid checkpoint; False when there is none (a fresh start)."""
        folder = checkpointing.latest_valid_checkpoint(self.checkpoint_root)
        if folder is None:
            return False
        tensors, torch_state, json_state = checkpointing.read_checkpoint(folder)
        if json_state["total_steps"] != self.total_steps:
            raise ValueError(
                f"{folder}: checkpoint planned {json_state['total_steps']} steps but this run plans "
                f"{self.total_steps}; resume with the same data and training parameters"
            )
        self.model.load_trainable_state_dict(tensors)
        self.optimizer.load_state_dict(torch_state["optimizer"])
        self.scheduler.load_state_dict(torch_state["scheduler"])
        self.scaler.load_state_dict(torch_state["scaler"])
        for key in ("step", "epoch", "batch_in_epoch", "nonfinite_total", "nonfinite_in_a_row",
                    "skipped_audio", "history"):
            setattr(self, key, json_state[key])
        self.seconds_before_resume = float(json_state.get("training_seconds", 0.0))
        # Applied when the loop starts, after the gate-embedding cache is built.
        self.pending_rng = (torch_state["rng"], json_state["rng"])
        if self.world_size > 1 and len(torch_state.get("rank_rng", [])) == self.world_size:
            self.pending_rng = (torch_state["rank_rng"][self.rank], json_state["rank_rng"][self.rank])
        log.info("resumed from %s (epoch %d, batch %d, step %d)", folder, self.epoch,
                 self.batch_in_epoch, self.step)
        return True

    # -- the loop -----------------------------------------------------------------------------
    def skip_gate_inputs(self) -> None:
        """Zeros in place of the gate's input for a single expert (a single LoRA), whose
        routing weight is 1 whatever the gate sees: no encoder pass over the data for it."""
        d_model = self.model.base.config.d_model
        self.pooled_train = torch.zeros(len(self.train_set), d_model)
        if self.dev_set is not None and len(self.dev_set):
            self.pooled_dev = torch.zeros(len(self.dev_set), d_model)

    def fit(self, stop: StopRequest | None = None) -> list[dict]:
        """Train to the last epoch; on a stop request save and raise TrainingInterrupted."""
        stop = stop if stop is not None else StopRequest()
        settings = self.settings
        self.fit_started = time.perf_counter()
        if self.forced_expert is None and self.model.config.num_experts == 1:
            self.skip_gate_inputs()  # one expert always gets weight 1: the gate's input is moot
        elif self.forced_expert is None:
            self.pooled_train = compute_pooled_cache(
                self.model, self.train_set, self.device, settings.batch_size * 2, self.amp_dtype,
                embeddings_dir=self.embeddings_dir)
            if self.dev_set is not None and len(self.dev_set):
                self.pooled_dev = compute_pooled_cache(
                    self.model, self.dev_set, self.device, settings.batch_size * 2, self.amp_dtype,
                    desc="dev gate embeddings")
            if self.fit_gate_input and self.step == 0:
                self.model.gate.fit_input(self.pooled_train)
        if self.pending_rng is not None:
            restore_rng_state(*self.pending_rng)
            self.pending_rng = None
        self.model.train()
        self.live = LiveMetrics(self.out_dir / artifacts.LIVE_METRICS, resume=self.step > 0,
                                enabled=self.rank == 0)
        while self.epoch < settings.epochs:
            self.run_epoch(stop)
            self.epoch += 1
            self.batch_in_epoch = 0
            self.end_of_epoch()
        self.live.close()
        return self.history

    def run_epoch(self, stop: StopRequest) -> None:
        settings = self.settings
        mode, _ = self.routing_at(self.step)
        sampler = EpochOrder(len(self.train_set), settings.seed, self.epoch, self.batch_in_epoch,
                             settings.batch_size, self.rank, self.world_size)
        loader = DataLoader(
            self.train_set, batch_size=settings.batch_size, sampler=sampler,
            num_workers=settings.num_workers,
            collate_fn=_Collate(self.pad_token_id, self.prefix_length),
            generator=torch.Generator().manual_seed(settings.seed + self.epoch),
        )
        total_batches = batches_per_epoch(len(self.train_set), settings.batch_size, self.world_size)
        progress = Progress(f"train epoch {self.epoch + 1}/{settings.epochs}", total=total_batches,
                            initial=self.batch_in_epoch, unit="batch", rate_unit="utt",
                            enabled=self.rank == 0)
        accumulated = []
        started = time.perf_counter()
        utterances = 0
        for batch in loader:
            self.batch_in_epoch += 1
            for reason in batch["errors"]:
                self.skipped_audio[reason] = self.skipped_audio.get(reason, 0) + 1
            if not accumulated:
                mode, temperature = self.routing_at(self.step)
            if batch["size"]:
                accumulated.append(self.micro_step(batch, mode, temperature))
                utterances += batch["size"]
            elif self.world_size > 1:  # the other processes wait for this one's gradients
                accumulated.append(self.micro_step(self.stand_in_batch(), mode, temperature,
                                                   weight=0.0))
            last_batch = self.batch_in_epoch == total_batches
            if len(accumulated) == settings.gradient_accumulation_steps or (last_batch and accumulated):
                record = self.optimizer_step(accumulated, mode, temperature)
                record["utterances_per_s"] = utterances / max(time.perf_counter() - started, 1e-9)
                self.live.step(self.step, record)
                progress.fields.update(progress_fields(record))
                accumulated = []
                if self.agreed_stop(stop):
                    progress.close()
                    folder = self.save_on_rank_zero()
                    self.live.close()
                    raise TrainingInterrupted(folder, stop.signal_name or "a stop on another process")
            progress.update(1, items=batch["size"])
        progress.close()

    def routing_at(self, step: int) -> tuple[str, float]:
        """(mode, temperature) of an optimizer step (0-based) under the curriculum."""
        return curriculum_routing(self.settings.routing, step, self.settings.epochs,
                                  self.steps_per_epoch)

    def accumulation_size(self) -> int:
        """Micro-batches in the accumulation group of the current batch: the last group
        of an epoch may be partial, and its gradient is divided by its true size."""
        total = batches_per_epoch(len(self.train_set), self.settings.batch_size, self.world_size)
        group = self.settings.gradient_accumulation_steps
        first = (self.batch_in_epoch - 1) // group * group
        return min(group, total - first)

    def stand_in_batch(self) -> dict:
        """A readable one-utterance batch, for a forward of weight zero (see run_epoch)."""
        if getattr(self, "_stand_in", None) is None:
            collate = _Collate(self.pad_token_id, self.prefix_length)
            for position in range(len(self.train_set)):
                batch = collate([self.train_set[position]])
                if batch["size"]:
                    self._stand_in = batch
                    break
            else:
                raise RuntimeError("no readable utterance in the training set")
        return self._stand_in

    def micro_step(self, batch: dict, mode: str, temperature: float, weight: float = 1.0) -> dict:
        """Forward and backward of one micro-batch, loss divided for accumulation.

        The load balance is left to `balance_step`; this keeps the router inputs it needs.
        Weight 0 runs the forward and backward and changes nothing: under DDP a process
        whose micro-batch was all unreadable audio must still join the gradient all-reduce.
        """
        settings = self.settings
        features, _ = batch_features(self.model, batch, self.device)
        decoder_input_ids = batch["decoder_input_ids"].to(self.device)
        labels = batch["labels"].to(self.device)
        index = batch["index"]
        forced = None
        if self.forced_expert is not None:
            experts = self.forced_expert[index].to(self.device)
            forced = torch.nn.functional.one_hot(experts, self.model.config.num_experts).float()
            pooled = torch.zeros(len(index), self.model.base.config.d_model, device=self.device)
        else:
            pooled = self.pooled_train[index].to(self.device)
        with autocast(self.device, self.amp_dtype):
            output = self.forward_model(
                input_features=features, decoder_input_ids=decoder_input_ids, labels=labels,
                pooled=pooled, mode=mode, top_k=settings.routing["top_k"], temperature=temperature,
                noise_std=settings.routing["noise_std"], forced_weights=forced,
            )
        loss = output["ce_loss"]
        kept = slice(None) if weight else slice(0, 0)  # a stand-in adds nothing to the balance
        if forced is None:
            loss = loss + settings.routing["z_loss_weight"] * output["z_loss"]
            self.step_router_inputs.append((pooled[kept], output["noise"].detach()[kept]))
        loss = loss * weight / self.accumulation_size()
        if torch.isfinite(loss):
            self.scaler.scale(loss).backward()
        elif self.world_size > 1:  # the others wait in the gradient all-reduce
            self.scaler.scale(loss.nan_to_num(0.0, 0.0, 0.0) * 0.0).backward()
        clean = torch.softmax(at_least_float32(output["gate_logits"].detach()) / temperature, dim=-1)
        return {
            "finite": bool(torch.isfinite(loss)),
            "ce_loss": float(output["ce_loss"].detach()), "z_loss": float(output["z_loss"].detach()),
            "gate_entropy": float(-(clean * clean.clamp_min(1e-9).log()).sum(-1).mean()),
            "size": batch["size"] if weight else 0,
        }

    def balance_step(self, mode: str, temperature: float) -> tuple[float, list[int]]:
        """(load balance of the whole step, dispatch count per expert), its gradient added.

        Re-runs the gate on the step's kept inputs and noise (the gate is unchanged
        within a step, so the routing is the one the micro-batches used), takes the
        dispatch counts and utterance total of every process, and adds the gradient of
        `load_balance_weight * E * sum_i f_i * P_i` to the gate's, summed over processes.
        """
        top_k = int(self.settings.routing["top_k"])
        pooled = torch.cat([p for p, _ in self.step_router_inputs])
        noise = torch.cat([n for _, n in self.step_router_inputs])
        self.step_router_inputs = []
        with autocast(self.device, self.amp_dtype):
            routed = self.model.route(pooled, mode, top_k, temperature, noise=noise)
        probs = routed["probs"]
        counts = dispatch_mask(probs.detach(), top_k).sum(0).double()
        first = dispatch_mask(probs.detach(), 1).sum(0).double()
        spread = at_least_float32(routed["gate_logits"].detach()).std(-1, unbiased=False).sum().double()
        totals = torch.cat([counts, first, counts.new_tensor([len(pooled)]), spread.reshape(1)])
        if self.world_size > 1:
            torch.distributed.all_reduce(totals)
        num_experts = len(counts)
        counts, first = totals[:num_experts], totals[num_experts : 2 * num_experts]
        total, spread = float(totals[-2]), float(totals[-1])
        local = switch_load_balance(probs.sum(0), counts, total, top_k)
        rate = self.balance_bias_rate()
        if rate > 0 and total > 0:  # the same update on every process: from global sums
            self.model.gate.nudge_balance_bias(first, rate * spread / total)
        weight = float(self.settings.routing["load_balance_weight"])
        if weight > 0:
            self.add_gate_gradient(self.scaler.scale(weight * local))
        value = local.detach().double().reshape(1)
        if self.world_size > 1:
            torch.distributed.all_reduce(value)
        return float(value), [int(c) for c in counts.tolist()]

    def balance_bias_rate(self) -> float:
        """routing.balance_bias_rate, or when null: on for a gate trained from scratch (it
        must break the experts' symmetry itself), off for a pretrained gate (its clusters,
        of whatever sizes, set the loads)."""
        rate = self.settings.routing["balance_bias_rate"]
        if rate is None:
            return AUTO_BALANCE_BIAS_RATE if self.fit_gate_input else 0.0
        return float(rate)

    def add_gate_gradient(self, loss: torch.Tensor) -> None:
        """Add d loss / d gate to the gate's gradients, summed over processes (outside the
        DDP forward, so DDP does not reduce it)."""
        params = list(self.model.gate.parameters())
        grads = torch.autograd.grad(loss, params)
        flat = torch.cat([g.reshape(-1) for g in grads])
        if self.world_size > 1:
            torch.distributed.all_reduce(flat)
        offset = 0
        for param in params:
            piece = flat[offset : offset + param.numel()].view_as(param)
            offset += param.numel()
            if param.grad is None:
                param.grad = piece.clone()
            else:
                param.grad.add_(piece)

    def optimizer_step(self, micro: list[dict], mode: str, temperature: float) -> dict:
        """Clip, step (unless a loss was non-finite), schedule; returns the logged record."""
        settings = self.settings
        lb_loss, dispatch = 0.0, None
        if self.forced_expert is None:
            lb_loss, dispatch = self.balance_step(mode, temperature)
        finite = all(m["finite"] for m in micro)
        if self.world_size > 1:  # every process takes the same decision
            flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            finite = bool(flag.item() == 0)
        grad_norm = float("nan")
        if finite:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm))
            finite = math.isfinite(grad_norm) or self.scaler.is_enabled()
        if finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.nonfinite_in_a_row = 0
        else:
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
            log.warning("non-finite loss or gradient at step %d: step skipped (%d in a row)",
                        self.step, self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= settings.max_nonfinite_in_a_row:
                raise NonFiniteLoss(
                    f"{self.nonfinite_in_a_row} non-finite steps in a row at step {self.step}: "
                    "lower train.lr, use runtime.precision=mixed or bf16 rather than fp16, or check the data report"
                )
        self.optimizer.zero_grad(set_to_none=True)
        used_lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        weights = [m["size"] for m in micro]
        if not sum(weights):  # only stand-ins on this process: log the global values as they are
            weights = [1] * len(micro)
        if self.world_size > 1:
            micro = self.global_micro_records(micro)
        record = {
            "step": self.step, "epoch": self.epoch + 1, "routing": mode, "temperature": temperature,
            "lr": used_lr, "grad_norm": grad_norm, "lb_loss": lb_loss,
            **{key: float(np.average([m[key] for m in micro], weights=weights))
               for key in ("ce_loss", "z_loss", "gate_entropy")},
        }
        if dispatch is not None:
            record["dispatch"] = dispatch
        self.history.append(record)
        return record

    def end_of_epoch(self) -> None:
        settings = self.settings
        record = {"epoch": self.epoch, "step": self.step}
        if self.dev_set is not None and len(self.dev_set) and (
            self.epoch % settings.eval_every_n_epochs == 0 or self.epoch == settings.epochs
        ):
            record["dev_loss"] = self.dev_loss()
            log.info("epoch %d: dev loss %.4f", self.epoch, record["dev_loss"])
        self.history.append(record)  # before saving, so a resume from here keeps it
        self.live.epoch(self.step, {key: record[key] for key in ("dev_loss",) if key in record})
        if self.epoch % settings.save_every_n_epochs == 0 or self.epoch == settings.epochs:
            record["checkpoint"] = str(self.checkpoint_root / f"{checkpointing.PREFIX}{self.step:08d}")
            self.save_on_rank_zero()

    @torch.no_grad()
    def dev_loss(self) -> float:
        """Teacher-forced cross-entropy on the dev set with the routing of this epoch."""
        mode, temperature = self.routing_at(max(self.step - 1, 0))
        loader = DataLoader(self.dev_set, batch_size=self.settings.batch_size * 2, shuffle=False,
                            collate_fn=_Collate(self.pad_token_id, self.prefix_length),
                            generator=torch.Generator().manual_seed(0))
        self.model.eval()
        total, count = 0.0, 0
        torch_state = torch.get_rng_state()
        for batch in loader:
            if not batch["size"]:
                continue
            pooled = self.pooled_dev[batch["index"]].to(self.device)
            with autocast(self.device, self.amp_dtype):
                output = self.model(
                    input_features=batch_features(self.model, batch, self.device)[0],
                    decoder_input_ids=batch["decoder_input_ids"].to(self.device),
                    labels=batch["labels"].to(self.device), pooled=pooled, mode=mode,
                    top_k=self.settings.routing["top_k"], temperature=temperature,
                )
            total += float(output["ce_loss"]) * batch["size"]
            count += batch["size"]
        torch.set_rng_state(torch_state)
        self.model.train()
        return total / max(count, 1)


class _Collate:
    """Picklable collate for DataLoader workers."""

    def __init__(self, pad_token_id: int, prefix_length: int):
        self.pad_token_id = pad_token_id
        self.prefix_length = prefix_length

    def __call__(self, items):
        return collate_utterances(items, self.pad_token_id, self.prefix_length)
