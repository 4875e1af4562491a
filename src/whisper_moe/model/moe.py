"""WhisperMoE: a frozen Whisper, stacked LoRA experts on its target Linears, and a gate.

Small verb set: `attach` experts to a base model, `route` an utterance, `forward` a batch
(one encoder and one decoder pass whatever the number of experts), `state_dict` of the
trainable part only.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from whisper_moe.model.gate import (
    Gate,
    at_least_float32,
    load_balance_loss,
    relative_router_noise,
    router_z_loss,
    routing_weights,
)
from whisper_moe.model.lora import MoELoRALinear, RoutingState, trainable_dtype

MOE_CONFIG_NAME = "moe_config.json"
WEIGHTS_NAME = "model.safetensors"
GATE_INPUT_STATISTICS = ("gate.input_mean", "gate.input_std")
BALANCE_BIAS = "gate.balance_bias"  # absent from checkpoints of gates trained without it


@dataclass
class MoEConfig:
    """What `moe_config.json` holds: enough to rebuild the model around its base."""

    base_model: str
    num_experts: int
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    gate_hidden: int = 512
    routing_mode: str = "topk"  # how the checkpoint routes at inference
    top_k: int = 1
    group_to_expert: dict[str, int] | None = None  # oracle routing table, when known

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / MOE_CONFIG_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> MoEConfig:
        path = Path(directory) / MOE_CONFIG_NAME
        if not path.exists():
            raise FileNotFoundError(f"{path}: not a whisper-moe checkpoint (no {MOE_CONFIG_NAME})")
        return cls(**json.loads(path.read_text()))


def target_linear_names(base: nn.Module, target_modules: list[str]) -> list[str]:
    """Names of the Linears the experts wrap: encoder and decoder attention projections."""
    names = []
    for name, module in base.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] in target_modules:
            if ".layers." in name:
                names.append(name)
    if not names:
        raise ValueError(f"no Linear named {target_modules} in the base model's layers")
    return names


def valid_encoder_positions(num_frames: torch.Tensor, encoder_length: int, total_frames: int) -> torch.Tensor:
    """Encoder positions that saw real audio: the conv stack halves the frame count."""
    ratio = total_frames / encoder_length
    return torch.clamp(torch.ceil(num_frames.float() / ratio), 1, encoder_length).long()


def masked_mean(hidden: torch.Tensor, valid_length: torch.Tensor) -> torch.Tensor:
    """Mean over each utterance's valid positions; padding frames never enter the mean."""
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    mask = (positions[None, :] < valid_length[:, None].to(hidden.device)).to(hidden.dtype)
    return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)


def utterance_mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy averaged within each utterance, then over utterances.

    Every utterance weighs the same whatever its length, so the mean over processes of
    per-process losses equals the loss of the whole global batch (data-parallel exact).
    """
    token_loss = F.cross_entropy(
        at_least_float32(logits).transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    counts = (labels != -100).sum(1).clamp_min(1)
    return (token_loss.sum(1) / counts).mean()


def pool_encoder_output(hidden: torch.Tensor, num_frames: torch.Tensor, total_frames: int) -> torch.Tensor:
    """The gate's input from an encoder output: float32 mean over the valid positions."""
    valid = valid_encoder_positions(num_frames, hidden.shape[1], total_frames)
    return masked_mean(hidden.float(), valid)


class WhisperMoE(nn.Module):
    """Frozen Whisper + E stacked LoRA experts + a per-utterance gate."""

    def __init__(self, base: nn.Module, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.routing = RoutingState()
        self.expert_layer_names = target_linear_names(base, config.target_modules)
        for name in self.expert_layer_names:
            parent_name, _, child = name.rpartition(".")
            parent = base.get_submodule(parent_name)
            layer = MoELoRALinear(
                getattr(parent, child), self.routing, config.num_experts,
                config.rank, config.alpha, config.dropout,
            )
            setattr(parent, child, layer)
        d_model = base.config.d_model
        base_weight = next(base.parameters())
        self.gate = Gate(d_model, config.num_experts, config.gate_hidden).to(
            device=base_weight.device, dtype=trainable_dtype(base_weight.dtype)
        )

    # -- pieces -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def routed(self, weights: torch.Tensor | None):
        """Within the block every expert layer mixes experts by `weights`."""
        previous = self.routing.weights
        self.routing.weights = weights
        try:
            yield
        finally:
            self.routing.weights = previous

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str = "cpu",
                        dtype: str = "float32") -> WhisperMoE:
        """A trained checkpoint folder (`moe_config.json` + `model.safetensors`), its base
        loaded from the name or folder the checkpoint references; `.tokenizer` is attached."""
        from whisper_moe.model.io import load_moe

        model, tokenizer = load_moe(directory, device, dtype=dtype)
        model.tokenizer = tokenizer
        return model

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write experts, gate and config (not the frozen base) as a checkpoint folder."""
        from whisper_moe.model.io import save_moe

        return save_moe(self, directory)

    def expert_layers(self) -> list[tuple[str, MoELoRALinear]]:
        return [(name, self.base.get_submodule(name)) for name in self.expert_layer_names]

    @property
    def total_frames(self) -> int:
        return 2 * self.base.config.max_source_positions

    def encode(self, input_features: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Encoder output with the given expert weights (None: the frozen base alone)."""
        self.routing.weights = weights
        try:
            return self.base.model.encoder(input_features).last_hidden_state
        finally:
            self.routing.weights = None

    @torch.no_grad()
    def pooled_embeddings(self, input_features: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        """The gate's input: frozen-base encoder output, mean over valid positions (float32).

        The base is frozen, so this is a fixed function of the audio: the embed stage
        computes exactly this, and training may cache it per utterance.
        """
        return pool_encoder_output(self.encode(input_features, None), num_frames, self.total_frames)

    def route(
        self,
        pooled: torch.Tensor,
        mode: str,
        top_k: int,
        temperature: float = 1.0,
        noise_std: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Gate logits (noise-free), the noise added, routing probabilities and weights.

        Training adds noise of `noise_std` relative to each utterance's logit spread;
        passing the `noise` of an earlier call reproduces that call's routing exactly.
        """
        gate_logits = self.gate(pooled.to(self.gate.net[0].weight.dtype))
        if noise is None:
            noise = (relative_router_noise(gate_logits, noise_std) if noise_std > 0 and self.training
                     else torch.zeros_like(gate_logits))
        weights, probs = routing_weights(gate_logits + noise, mode, top_k, temperature)
        return {"gate_logits": gate_logits, "noise": noise, "probs": probs, "weights": weights}

    def decode_logits(
        self,
        input_features: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        weights: torch.Tensor,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the whole Whisper with experts mixed by `weights` (one pass)."""
        self.routing.weights = weights
        try:
            output = self.base(
                input_features=input_features,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                use_cache=False,
            )
        finally:
            self.routing.weights = None
        return output.logits

    # -- training forward ---------------------------------------------------------------
    def forward(
        self,
        input_features: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        labels: torch.Tensor,
        pooled: torch.Tensor,
        mode: str = "soft",
        top_k: int = 2,
        temperature: float = 1.0,
        noise_std: float = 0.0,
        load_balance_weight: float = 0.0,
        z_loss_weight: float = 0.0,
        forced_weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy of the routed model plus the router's auxiliary losses of this batch.

        The trainer balances load over a whole optimizer step instead (see
        `whisper_moe.training.trainer`); `lb_loss` here is this batch's alone.
        """
        routed = self.route(pooled, mode, top_k, temperature, noise_std)
        weights = routed["weights"] if forced_weights is None else forced_weights
        logits = self.decode_logits(input_features, decoder_input_ids, weights)
        ce_loss = utterance_mean_cross_entropy(logits, labels)
        lb_loss = load_balance_loss(routed["probs"], top_k)
        z_loss = router_z_loss(routed["gate_logits"])
        loss = ce_loss
        if forced_weights is None:
            loss = loss + load_balance_weight * lb_loss + z_loss_weight * z_loss
        return {"loss": loss, "ce_loss": ce_loss, "lb_loss": lb_loss, "z_loss": z_loss, **routed}

    # -- trainable state ------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only experts and gate (with its input statistics): the base is referenced by
        name, never copied."""
        state = {f"gate.{k}": v for k, v in self.gate.state_dict().items()}
        for name, layer in self.expert_layers():
            state[f"{name}.lora_A"] = layer.lora_A.data
            state[f"{name}.lora_B"] = layer.lora_B.data
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Inverse of `trainable_state_dict`; `strict=False` loads whatever part is present.

        Checkpoints written before the gate standardised its input lack its statistics:
        they load with the identity standardisation they were trained with.
        """
        own = self.trainable_state_dict()
        missing = sorted(set(own) - set(state) - set(GATE_INPUT_STATISTICS) - {BALANCE_BIAS})
        unexpected = sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(f"checkpoint mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for key, value in state.items():
            if key in own:
                if own[key].shape != value.shape:
                    raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} != {tuple(own[key].shape)}")
                own[key].copy_(value.to(own[key].dtype))
        if strict and not set(GATE_INPUT_STATISTICS) & set(state):
            self.gate.input_mean.zero_()
            self.gate.input_std.fill_(1.0)
        if strict and BALANCE_BIAS not in state:
            self.gate.balance_bias.zero_()

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        experts = [p for _, layer in self.expert_layers() for p in (layer.lora_A, layer.lora_B)]
        return {"experts": experts, "gate": list(self.gate.parameters())}
