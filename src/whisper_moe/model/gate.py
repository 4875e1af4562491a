"""The per-utterance gate and the routing rules that turn its logits into weights."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Losses and softmaxes in float32 under bf16 autocast; float64 stays float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class Gate(nn.Module):
    """MLP `d -> hidden -> E` over the mean-pooled frozen-base encoder output."""

    def __init__(self, input_dim: int, num_experts: int, hidden_dim: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_experts)
        )

    def forward(self, pooled_embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(pooled_embeddings)


def routing_weights(
    gate_logits: torch.Tensor,
    mode: str,
    top_k: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights used to mix experts, full softmax probabilities) for one batch.

    soft: the tempered softmax. topk: the softmax renormalised over the k largest,
    the others exactly zero (so an unrouted expert gets no gradient from that utterance).
    """
    probs = F.softmax(at_least_float32(gate_logits) / temperature, dim=-1)
    if mode == "soft" or top_k >= gate_logits.shape[-1]:
        return probs, probs
    if mode != "topk":
        raise ValueError(f"routing mode {mode!r}: expected 'soft' or 'topk'")
    top_values, top_index = probs.topk(top_k, dim=-1)
    weights = torch.zeros_like(probs).scatter(-1, top_index, top_values)
    return weights / weights.sum(dim=-1, keepdim=True), probs


def load_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """KL(uniform || mean routing probability): zero when experts share the batch evenly."""
    mean_probs = probs.mean(dim=0).clamp_min(1e-9)
    num_experts = probs.shape[-1]
    return (torch.log(torch.tensor(1.0 / num_experts)) - mean_probs.log()).mean()


def router_z_loss(gate_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared log-partition: keeps gate logits small and the softmax well-conditioned."""
    return torch.logsumexp(at_least_float32(gate_logits), dim=-1).pow(2).mean()


def curriculum_routing(params_routing: dict, epoch: int, total_epochs: int) -> tuple[str, float]:
    """(mode, temperature) for an epoch: soft for `soft_epochs`, then top-k.

    The temperature anneals linearly from start to end over the soft phase.
    """
    mode = params_routing["mode"]
    start, end = params_routing["temperature_start"], params_routing["temperature_end"]
    if mode == "soft":
        return "soft", end
    if mode == "topk":
        return "topk", end
    if mode != "curriculum":
        raise ValueError(f"routing.mode {mode!r}: expected soft, topk or curriculum")
    soft_epochs = min(params_routing["soft_epochs"], max(total_epochs - 1, 0))
    if epoch < soft_epochs:
        fraction = epoch / max(soft_epochs, 1)
        return "soft", start + (end - start) * fraction
    return "topk", end
