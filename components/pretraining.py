"""The pretrained MoE's first stages: embed -> cluster -> pretrain-gate -> pretrain-experts."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.images import CPU_IMAGE, CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def embed_utterances(
    params_yaml: str,
    dataset: Input[Dataset],
    embeddings: Output[Dataset],
):
    """Pooled frozen-encoder embeddings of a stratified sample of the training split.

    The same mean over real-audio positions that the gate routes on, so clusters and
    the pretrained gate see what joint training sees.

    Args:
        params_yaml: Resolved configuration (YAML); embed.embedding_percent sets the sample.
        dataset: Validated manifests; the training split is sampled.

    Returns:
        embeddings: embeddings.npy (float32 [N, d]), index.jsonl and embed_report.json.
    """
    from whisper_moe import artifacts
    from whisper_moe.stages import embed
    from whisper_moe_kfp.parameters import params_from_yaml

    params = params_from_yaml(params_yaml)
    result = embed.run(params, artifacts.split_manifest(dataset.path, "train"), embeddings.path)
    embeddings.metadata.update({"count": result["count"], "dim": result["dim"]})


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def cluster_embeddings(
    params_yaml: str,
    embeddings: Input[Dataset],
    clusters: Output[Dataset],
    cluster_metrics: Output[Metrics],
    cluster_plot: Output[HTML],
):
    """Cluster the embeddings; the number of clusters becomes the number of experts.

    Args:
        params_yaml: Resolved configuration (YAML); the cluster section applies.
        embeddings: Output of the embed task.

    Returns:
        clusters: labels.npy, soft_labels.npy, cluster_report.json and scatter.png.
        cluster_metrics: Number of clusters, silhouette and agreement with the groups.
        cluster_plot: 2-D scatter of the embeddings by cluster and by group.
    """
    from pathlib import Path

    from whisper_moe import artifacts
    from whisper_moe.stages import cluster
    from whisper_moe_kfp import runtime
    from whisper_moe_kfp.parameters import params_from_yaml

    params = params_from_yaml(params_yaml)
    out_dir = Path(clusters.path)
    cluster.run(params, embeddings.path, out_dir)
    report = artifacts.load_cluster_report(out_dir)
    runtime.log_numbers(cluster_metrics, report)
    sizes = ", ".join(str(size) for size in report["cluster_sizes"])
    details = (f"<p>{report['algorithm']}: {report['num_clusters']} clusters ({report['k_selection']}), "
               f"sizes {sizes}</p>")
    runtime.write_text(cluster_plot.path, runtime.image_page(
        "Clusters of the pooled embeddings", [out_dir / artifacts.CLUSTER_SCATTER], details))


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def pretrain_gate(
    params_yaml: str,
    embeddings: Input[Dataset],
    clusters: Input[Dataset],
    gate: Output[Model],
    gate_metrics: Output[Metrics],
):
    """Train the gate to predict the clusters from the embeddings (soft labels, early stopping).

    Args:
        params_yaml: Resolved configuration (YAML); the pretrain_gate section applies.
        embeddings: Output of the embed task.
        clusters: Output of the cluster task.

    Returns:
        gate: gate.safetensors, gate_config.json, gate_metrics.json (with the confusion matrix).
        gate_metrics: Held-out accuracy against the clusters and the training figures.
    """
    from whisper_moe import artifacts
    from whisper_moe.stages import pretrain_gate as stage
    from whisper_moe_kfp import runtime
    from whisper_moe_kfp.parameters import params_from_yaml

    params = params_from_yaml(params_yaml)
    stage.run(params, embeddings.path, clusters.path, gate.path)
    runtime.log_numbers(gate_metrics, artifacts.load_gate_metrics(gate.path))


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def pretrain_experts(
    params_yaml: str,
    dataset: Input[Dataset],
    clusters: Input[Dataset],
    gate: Input[Model],
    experts: Output[Model],
    experts_metrics: Output[Metrics],
    embeddings: Input[Dataset] = None,
    run_id: str = "",
    checkpoint_root: str = "/checkpoints",
):
    """Train every expert on the utterances the pretrained gate routes to it, in one pass.

    Args:
        params_yaml: Resolved configuration (YAML); the pretrain_experts section applies.
        dataset: Validated manifests; the training split is used.
        clusters: Output of the cluster task (group to expert table for oracle routing).
        gate: The pretrained gate.
        embeddings: Optional output of the embed task: the utterances it holds are not
            encoded again for routing (when it pooled the same way).
        run_id: The run's id; with checkpoint_root it names the folder a retry resumes from.
        checkpoint_root: Volume that outlives the pod (pipelines/placement.py mounts it);
            a retried attempt of the same run resumes from the checkpoints there.

    Returns:
        experts: A full MoE checkpoint (pretrained gate and experts) that joint training starts from.
        experts_metrics: Utterances per expert, losses and time.
    """
    import tempfile
    from pathlib import Path

    from whisper_moe import artifacts
    from whisper_moe.stages import pretrain_experts as stage
    from whisper_moe_kfp import runtime
    from whisper_moe_kfp.parameters import params_from_yaml

    params = params_from_yaml(params_yaml)
    durable_dir = runtime.durable_work_dir(checkpoint_root, run_id, "pretrain-experts")
    work_dir = durable_dir or Path(tempfile.mkdtemp(prefix="pretrain-experts-"))
    result = stage.run(params, artifacts.split_manifest(dataset.path, "train"), clusters.path,
                       gate.path, work_dir, resume=durable_dir is not None,
                       embeddings_dir=embeddings.path if embeddings is not None else None)
    runtime.move_folder(result["checkpoint"], experts.path)
    if durable_dir is not None:
        runtime.remove_durable_folder(durable_dir)
    runtime.log_numbers(experts_metrics, result)
