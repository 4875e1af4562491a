"""Kubeflow Pipelines components: one lightweight Python component per stage.

Each component runs in the project's image (components.images) and only calls its
stage function in `whisper_moe.stages`, with the Kubeflow bookkeeping around the call
in `whisper_moe_kfp.runtime`; placement (GPUs, pools, secrets, retries, caching) is
applied by the pipelines in pipelines/placement.py, never here. Both pipelines import
the same `train_moe` object, so their joint-training steps are one component.

The component modules do not use `from __future__ import annotations`: KFP reads the
parameter annotations (Input[Dataset], Output[Model], ...) as types at definition time.
"""

from components.data import prepare_data, resolve_data
from components.evaluate import evaluate_moe
from components.params import resolve_params
from components.pretraining import (
    cluster_embeddings,
    embed_utterances,
    pretrain_experts,
    pretrain_gate,
)
from components.publish import publish_model
from components.train import train_moe

__all__ = [
    "cluster_embeddings",
    "embed_utterances",
    "evaluate_moe",
    "prepare_data",
    "pretrain_experts",
    "pretrain_gate",
    "publish_model",
    "resolve_data",
    "resolve_params",
    "train_moe",
]
