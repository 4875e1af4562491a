"""Stacked LoRA experts: all E experts of a layer computed as one LoRA of rank E*r.

The seed ran the whole Whisper once per expert. Here a target Linear keeps every
expert's A and B side by side, so a forward is `x @ A_all -> scale each rank block by
that utterance's routing weight -> @ B_all`: one matmul pair whatever E is.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def trainable_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """Experts and gate keep float32 master weights over a bf16/fp16 base (float64 stays)."""
    return base_dtype if base_dtype == torch.float64 else torch.float32


class RoutingState:
    """Per-utterance expert weights shared by every MoE layer of one model.

    `weights` is `[batch, num_experts]` or None (None = experts off, the frozen base).
    When every utterance uses at most k < E/2 experts (top-k, one-hot, oracle routing),
    the layers gather just those k blocks: the cost of a rank k*r LoRA, not E*r.
    """

    def __init__(self) -> None:
        self._weights: torch.Tensor | None = None
        self.index: torch.Tensor | None = None  # [batch, k] experts used, when sparse
        self.index_weights: torch.Tensor | None = None  # [batch, k] their weights

    @property
    def weights(self) -> torch.Tensor | None:
        return self._weights

    @weights.setter
    def weights(self, weights: torch.Tensor | None) -> None:
        self._weights = weights
        self.index = self.index_weights = None
        if weights is None:
            return
        used = int((weights != 0).sum(-1).max())
        if 0 < used <= weights.shape[-1] // 2:
            self.index_weights, self.index = weights.topk(used, dim=-1)


class MoELoRALinear(nn.Module):
    """A frozen Linear plus E stacked LoRA experts mixed by `RoutingState.weights`."""

    def __init__(
        self,
        base: nn.Linear,
        routing: RoutingState,
        num_experts: int,
        rank: int,
        alpha: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.routing = routing
        self.num_experts = num_experts
        self.rank = rank
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base.weight
        dtype = trainable_dtype(weight.dtype)
        self.lora_A = nn.Parameter(
            torch.empty(num_experts * rank, base.in_features, dtype=dtype, device=weight.device)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, num_experts * rank, dtype=dtype, device=weight.device)
        )
        self.reset_experts()

    def reset_experts(self) -> None:
        """Each expert's A as PEFT initialises it (Kaiming-uniform), every B zero."""
        for expert in range(self.num_experts):
            nn.init.kaiming_uniform_(self.expert_A(expert), a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def expert_A(self, expert: int) -> torch.Tensor:
        """View of one expert's A block, `[rank, in_features]`."""
        return self.lora_A.data[expert * self.rank : (expert + 1) * self.rank]

    def expert_B(self, expert: int) -> torch.Tensor:
        """View of one expert's B block, `[out_features, rank]`."""
        return self.lora_B.data[:, expert * self.rank : (expert + 1) * self.rank]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.base(x)
        weights = self.routing.weights
        if weights is None:
            return output
        if self.routing.index is not None:
            return output + self.gathered_delta(x, self.routing.index, self.routing.index_weights)
        hidden = F.linear(self.dropout(x), self.lora_A.to(x.dtype))  # [B, T, E*r]
        block_scale = (weights * self.scaling).repeat_interleave(self.rank, dim=-1)  # [B, E*r]
        hidden = hidden * block_scale.to(hidden.dtype).unsqueeze(1)
        return output + F.linear(hidden, self.lora_B.to(x.dtype))

    def gathered_delta(self, x: torch.Tensor, index: torch.Tensor, index_weights: torch.Tensor):
        """LoRA output of only the k experts each utterance uses: `[B, T, out]`."""
        batch, k = index.shape
        a_blocks = self.lora_A.view(self.num_experts, self.rank, -1)[index]  # [B, k, r, in]
        a_blocks = a_blocks.reshape(batch, k * self.rank, -1).to(x.dtype)
        b_blocks = self.lora_B.view(-1, self.num_experts, self.rank).permute(1, 2, 0)[index]
        b_blocks = b_blocks.reshape(batch, k * self.rank, -1).to(x.dtype)  # [B, k*r, out]
        hidden = torch.bmm(self.dropout(x), a_blocks.transpose(1, 2))  # [B, T, k*r]
        block_scale = (index_weights * self.scaling).repeat_interleave(self.rank, dim=-1)
        hidden = hidden * block_scale.to(hidden.dtype).unsqueeze(1)
        return torch.bmm(hidden, b_blocks)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, rank={self.rank}, scaling={self.scaling:g}"
