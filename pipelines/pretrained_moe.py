"""Pretrained MoE pipeline: data -> embed -> cluster -> pretrain-gate -> pretrain-experts
-> joint training -> evaluation -> publish.

Clustering the pooled encoder embeddings decides the number of experts; gate and
experts are pretrained on the clusters before the joint training, which is the same
component as in the regular pipeline.
Compile with `python pipelines/compile.py` (or `python pipelines/pretrained_moe.py OUT.yaml`).
"""

import sys
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Metrics, Model

from components import (
    cluster_embeddings,
    embed_utterances,
    evaluate_moe,
    prepare_data,
    pretrain_experts,
    pretrain_gate,
    publish_model,
    resolve_data,
    resolve_params,
    train_moe,
)
from pipelines import params_path
from pipelines.placement import place
from whisper_moe_kfp.parameters import PRETRAINED_PARAMETERS, pipeline_defaults

NAME = "whisper-moe-pretrained"
# What the run shows as its results (and a local run returns).
class Outputs(NamedTuple):
    checkpoint: Model
    metrics: Metrics
    report: HTML
    pointer: Artifact
    gate_confusion: ClassificationMetrics
DEFAULTS = pipeline_defaults(params_path(), PRETRAINED_PARAMETERS)


@dsl.pipeline(name=NAME)
def pretrained_moe(
    params_yaml: str = DEFAULTS["params_yaml"],
    mode: str = DEFAULTS["mode"],
    base_model: str = DEFAULTS["base_model"],
    embedding_percent: float = DEFAULTS["embedding_percent"],
    clustering_algorithm: str = DEFAULTS["clustering_algorithm"],
    max_clusters: int = DEFAULTS["max_clusters"],
    epochs: int = DEFAULTS["epochs"],
    batch_size: int = DEFAULTS["batch_size"],
    gradient_accumulation_steps: int = DEFAULTS["gradient_accumulation_steps"],
    learning_rate: float = DEFAULTS["learning_rate"],
    routing_mode: str = DEFAULTS["routing_mode"],
    top_k: int = DEFAULTS["top_k"],
    data_percent: float = DEFAULTS["data_percent"],
    dvc_repo: str = "",
    dvc_rev: str = "",
    dvc_path: str = "",
    data_s3_uri: str = "",
    data_dir: str = "",
    output_s3_uri: str = "",
) -> Outputs:
    """Whisper mixture of LoRA experts with clustering-based pretraining (the pretrained MoE).

    A sample of the training audio is embedded with the frozen encoder and clustered;
    the clusters become the experts. The gate is pretrained to predict the clusters
    and each expert on the utterances the gate sends it; then gate and experts train
    jointly, the test split is evaluated and the result published to S3.

    Args:
        params_yaml: Configuration in params.yaml's format, on top of the built-in defaults (default: the repository's params.yaml, as its differences from those defaults). The parameters below override its keys.
        mode: quick (a smoke run capped by the quick section of params_yaml) or full (the real run).
        base_model: Whisper to adapt: demo (tiny.en, offline), a hub name such as openai/whisper-large-v2, or a directory in the image.
        embedding_percent: Stratified share of the training split embedded for clustering, in percent.
        clustering_algorithm: spectral, kmeans or hdbscan.
        max_clusters: Largest number of clusters (= experts) tried when choosing it by silhouette.
        epochs: Joint-training epochs in full mode (quick mode uses quick.epochs).
        batch_size: Utterances per training step on one GPU (train.batch_size).
        gradient_accumulation_steps: Steps per optimizer update; raise it when lowering batch_size.
        learning_rate: Learning rate of the LoRA experts (train.lr).
        routing_mode: soft, topk, or curriculum (soft for routing.soft_epochs, then top-k).
        top_k: Experts per utterance under top-k routing.
        data_percent: Stratified share of the training split used, in percent.
        dvc_repo: Git URL of a DVC repository holding the data folder (with dvc_path); empty: not used.
        dvc_rev: Git revision (tag, branch or commit) of dvc_repo; empty: its default branch.
        dvc_path: Data folder inside dvc_repo: train/dev/test.jsonl with their audio.
        data_s3_uri: s3://bucket/prefix of a data folder (train/dev/test.jsonl and audio); empty: not used.
        data_dir: Data folder on the data volume (a claim named by WHISPER_MOE_DATA_PVC when compiling, mounted at /data in every task that reads data), read in place: a path under /data or relative to it; empty: not used. With no data source at all the demo corpus is synthesised.
        output_s3_uri: s3://bucket/prefix to publish the model, metrics and report under, in a folder named by the run id; empty: keep them in Kubeflow's artifact store only.
    """
    params = place(resolve_params(
        params_yaml=params_yaml, mode=mode, base_model=base_model, epochs=epochs,
        batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate, routing_mode=routing_mode, top_k=top_k,
        data_percent=data_percent, embedding_percent=embedding_percent,
        clustering_algorithm=clustering_algorithm, max_clusters=max_clusters), "light")
    # Which data, resolved every run; fetched (cached) only when that identity is new.
    which_data = place(resolve_data(
        params_yaml=params.output, dvc_repo=dvc_repo, dvc_rev=dvc_rev, dvc_path=dvc_path,
        data_s3_uri=data_s3_uri, data_dir=data_dir), "resolve_data")
    data = place(prepare_data(
        params_yaml=which_data.outputs["data_params_yaml"], dvc_repo=dvc_repo, dvc_rev=dvc_rev,
        dvc_path=dvc_path, data_s3_uri=data_s3_uri, data_dir=data_dir,
        data_identity=which_data.outputs["identity"]), "data")
    dataset = data.outputs["dataset"]
    embeddings = place(embed_utterances(params_yaml=params.output, dataset=dataset), "embed")
    clusters = place(cluster_embeddings(
        params_yaml=params.output, embeddings=embeddings.outputs["embeddings"]), "cluster")
    gate = place(pretrain_gate(
        params_yaml=params.output, embeddings=embeddings.outputs["embeddings"],
        clusters=clusters.outputs["clusters"]), "pretrain_gate")
    experts = place(pretrain_experts(
        params_yaml=params.output, dataset=dataset, clusters=clusters.outputs["clusters"],
        gate=gate.outputs["gate"], embeddings=embeddings.outputs["embeddings"],
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "pretrain_experts")
    training = place(train_moe(
        params_yaml=params.output, dataset=dataset, init=experts.outputs["experts"],
        embeddings=embeddings.outputs["embeddings"], run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "train")
    evaluation = place(evaluate_moe(
        params_yaml=params.output, dataset=dataset, checkpoint=training.outputs["checkpoint"],
        training_log=training.outputs["training_log"], gate=gate.outputs["gate"]), "evaluate")
    published = place(publish_model(
        params_yaml=params.output, checkpoint=training.outputs["checkpoint"],
        evaluation=evaluation.outputs["evaluation"], report=evaluation.outputs["report"],
        output_s3_uri=output_s3_uri, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, pipeline_name="pretrained"), "publish")
    return Outputs(checkpoint=training.outputs["checkpoint"], metrics=evaluation.outputs["metrics"],
                   report=evaluation.outputs["report"], pointer=published.outputs["pointer"],
                   gate_confusion=evaluation.outputs["gate_confusion"])


if __name__ == "__main__":
    from pipelines.compile import compile_pipeline

    compile_pipeline(pretrained_moe, Path(sys.argv[1]) if len(sys.argv) > 1 else None,
                     "pretrained_moe")
