"""The per-utterance gate and the routing rules that turn its logits into weights."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Losses and softmaxes in float32 under bf16 autocast; float64 stays float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class Gate(nn.Module):
    """MLP `d -> hidden -> E` over the standardised mean-pooled frozen-base encoder output.

    The pooled encoder output has a large shared component and a small
    utterance-dependent one; standardising each dimension with statistics of the
    training embeddings (`fit_input`) lets the first layer see the differences. The
    statistics are buffers, so they travel in the gate's state dict and checkpoints.

    `balance_bias` is added to every logit. No gradient moves it: training nudges it after
    each optimizer step toward experts that were first choice less often than 1/E
    (`nudge_balance_bias`, loss-free balancing as in DeepSeek-V3), because the load-balance
    loss's gradient vanishes once the softmax saturates and cannot revive an expert the
    gate has stopped choosing. A buffer too, so it routes at inference as in training.
    """

    def __init__(self, input_dim: int, num_experts: int, hidden_dim: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_experts)
        )
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_std", torch.ones(input_dim))
        self.register_buffer("balance_bias", torch.zeros(num_experts))

    @torch.no_grad()
    def fit_input(self, embeddings: torch.Tensor, min_std: float = 1e-6) -> None:
        """Set the standardisation from training embeddings `[n, d]` (in place, DDP-safe)."""
        embeddings = embeddings.to(self.input_mean.device, torch.float64)
        std = embeddings.std(0, unbiased=False) if len(embeddings) > 1 else torch.ones_like(embeddings[0])
        self.input_mean.copy_(embeddings.mean(0))
        self.input_std.copy_(std.clamp_min(min_std))

    def standardise(self, pooled_embeddings: torch.Tensor) -> torch.Tensor:
        return (pooled_embeddings - self.input_mean) / self.input_std

    def forward(self, pooled_embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardise(pooled_embeddings)) + self.balance_bias.to(pooled_embeddings.dtype)

    @torch.no_grad()
    def nudge_balance_bias(self, first_choice_counts: torch.Tensor, step_size: float) -> None:
        """Raise the bias of experts chosen first less often than the mean, lower the others',
        by `step_size` (logit units; equal counts move nothing)."""
        counts = first_choice_counts.to(self.balance_bias)
        self.balance_bias.add_(step_size * torch.sign(counts.mean() - counts))


def relative_router_noise(gate_logits: torch.Tensor, noise_std: float) -> torch.Tensor:
    """Gaussian noise of `noise_std` times each utterance's logit spread across experts.

    A fixed absolute noise is as large as the whole utterance-dependent part of the
    logits early on and reshuffles top-k for about half the utterances; scaled to the
    spread, it only flips near-ties whatever the logits' scale.
    """
    spread = gate_logits.detach().float().std(-1, keepdim=True, unbiased=False)
    return noise_std * spread.to(gate_logits.dtype) * torch.randn_like(gate_logits)


def routing_weights(
    gate_logits: torch.Tensor,
    mode: str,
    top_k: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights used to mix experts, full softmax probabilities) for one batch.

    soft: the tempered softmax. topk: the softmax renormalised over the k largest,
    the others exactly zero (so an unrouted expert gets no gradient from that utterance).
    Top-1 keeps the chosen expert's un-renormalised probability (Switch Transformer):
    renormalised it would always be 1.0 and the gate would get no task gradient.
    """
    probs = F.softmax(at_least_float32(gate_logits) / temperature, dim=-1)
    if mode == "soft" or top_k >= gate_logits.shape[-1]:
        return probs, probs
    if mode != "topk":
        raise ValueError(f"routing mode {mode!r}: expected 'soft' or 'topk'")
    top_values, top_index = probs.topk(top_k, dim=-1)
    weights = torch.zeros_like(probs).scatter(-1, top_index, top_values)
    if top_k == 1:
        return weights, probs
    return weights / weights.sum(dim=-1, keepdim=True), probs


def dispatch_mask(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """One-hot `[n, E]` of the k experts each utterance is dispatched to (its top-k)."""
    k = min(top_k, probs.shape[-1])
    return torch.zeros_like(probs).scatter(-1, probs.topk(k, dim=-1).indices, 1.0)


def switch_load_balance(prob_sum: torch.Tensor, dispatch_counts: torch.Tensor, total: float | torch.Tensor,
                        top_k: int) -> torch.Tensor:
    """Switch/GShard load balance `E * sum_i f_i * P_i`.

    `f_i` is the share of dispatched slots expert i received (counts / (total * k),
    not differentiable) and `P_i` its mean router probability (prob_sum / total, carries
    the gradient). 1.0 when dispatch or probabilities are uniform, E when one expert
    takes everything. Given the sums of only part of the utterances (one process) with
    the global counts and total, it returns that part's share of the global loss.
    """
    num_experts = prob_sum.shape[-1]
    k = min(top_k, num_experts)
    fraction = dispatch_counts.to(prob_sum.dtype) / (total * k)
    return num_experts * (fraction * prob_sum / total).sum()


def load_balance_loss(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """The Switch load balance of one batch of routing probabilities `[n, E]`."""
    counts = dispatch_mask(probs.detach(), top_k).sum(0)
    return switch_load_balance(probs.sum(0), counts, probs.shape[0], top_k)


def router_z_loss(gate_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared log-partition: keeps gate logits small and the softmax well-conditioned."""
    return torch.logsumexp(at_least_float32(gate_logits), dim=-1).pow(2).mean()


def soft_phase_steps(params_routing: dict, total_epochs: int, steps_per_epoch: int) -> int:
    """Optimizer steps of soft routing in a curriculum (at least one top-k epoch remains)."""
    soft_epochs = min(int(params_routing["soft_epochs"]), max(total_epochs - 1, 0))
    return soft_epochs * steps_per_epoch


def curriculum_routing(params_routing: dict, step: int, total_epochs: int,
                       steps_per_epoch: int) -> tuple[str, float]:
    """(mode, temperature) for an optimizer step (0-based).

    curriculum: soft for `soft_epochs`, the temperature annealed linearly per step from
    `temperature_start` at the first step to `temperature_end` at the last soft step;
    then top-k at `temperature_end`. soft and topk: `temperature_end` throughout.
    """
    mode = params_routing["mode"]
    start, end = float(params_routing["temperature_start"]), float(params_routing["temperature_end"])
    if mode in ("soft", "topk"):
        return mode, end
    if mode != "curriculum":
        raise ValueError(f"routing.mode {mode!r}: expected soft, topk or curriculum")
    soft_steps = soft_phase_steps(params_routing, total_epochs, steps_per_epoch)
    if step >= soft_steps:
        return "topk", end
    fraction = step / (soft_steps - 1) if soft_steps > 1 else 1.0
    return "soft", start + (end - start) * fraction
