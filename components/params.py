"""resolve-params: the pipeline's tuned values applied on top of params.yaml."""

from typing import Optional

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def resolve_params(
    params_yaml: str,
    mode: str,
    base_model: str,
    epochs: int,
    batch_size: int,
    gradient_accumulation_steps: int,
    learning_rate: float,
    routing_mode: str,
    top_k: int,
    data_percent: float,
    num_experts: int = 0,
    embedding_percent: Optional[float] = None,  # noqa: UP045 (KFP reads typing.Optional only)
    clustering_algorithm: Optional[str] = None,  # noqa: UP045
    max_clusters: int = 0,
) -> str:
    """Merge the run's parameters into params.yaml; every later task reads the result.

    Args:
        params_yaml: The text of params.yaml.
        mode: quick or full.
        base_model: Whisper to adapt ('demo', a hub name or a directory).
        epochs: train.epochs.
        batch_size: train.batch_size.
        gradient_accumulation_steps: train.gradient_accumulation_steps.
        learning_rate: train.lr.
        routing_mode: routing.mode.
        top_k: routing.top_k.
        data_percent: data.data_percent.
        num_experts: model.num_experts (regular pipeline only; 0: not given).
        embedding_percent: embed.embedding_percent (pretrained pipeline only).
        clustering_algorithm: cluster.algorithm (pretrained pipeline only).
        max_clusters: cluster.max_clusters (pretrained pipeline only; 0: not given).

    Returns:
        The resolved configuration as YAML.
    """
    from whisper_moe_kfp.parameters import resolve_params_yaml

    # Whole numbers use 0 for "not given": kfp.local cannot pass an absent Optional[int].
    return resolve_params_yaml(params_yaml, {
        "mode": mode, "base_model": base_model, "epochs": epochs, "batch_size": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "learning_rate": learning_rate, "routing_mode": routing_mode, "top_k": top_k,
        "data_percent": data_percent, "num_experts": num_experts or None,
        "embedding_percent": embedding_percent, "clustering_algorithm": clustering_algorithm,
        "max_clusters": max_clusters or None,
    })
