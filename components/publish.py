"""publish-model: the model folder (with lineage and model card), metrics and report to S3."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def publish_model(
    params_yaml: str,
    checkpoint: Input[Model],
    evaluation: Input[Artifact],
    report: Input[HTML],
    pointer: Output[Artifact],
    model_card: Output[Markdown],
    output_s3_uri: str = "",
    run_id: str = "",
    run_name: str = "",
    pipeline_name: str = "",
):
    """Upload the model folder, metrics, report and params to output_s3_uri/<run id>/.

    The model folder holds the checkpoint, lineage.json (code commit, image digest, data
    revision and md5, base model, params, run id) and a model card (README.md). Also
    writes pointer.json there ({"uri", "run_uri", "metrics", "lineage", ...});
    scripts/record_model.py versions the run folder by content in a DVC project. S3
    credentials and endpoint come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    AWS_ENDPOINT_URL. With an empty output_s3_uri nothing is uploaded and the pointer
    names Kubeflow's copy. Both outputs carry the lineage (code commit, image and digest,
    data revision and md5, base model, pipeline, run id) as metadata the UI lists.

    Args:
        params_yaml: Resolved configuration (YAML), saved beside the model.
        checkpoint: The trained MoE checkpoint.
        evaluation: The evaluation folder (metrics.json).
        report: The evaluation report.
        output_s3_uri: s3://bucket/prefix to publish under; empty: do not upload.
        run_id: The Kubeflow run id (names the folder).
        run_name: The Kubeflow run name (recorded in the pointer).
        pipeline_name: Which pipeline trained the model (pretrained or regular), for the card.

    Returns:
        pointer: pointer.json naming the published model, its metrics, lineage and the run.
        model_card: The model card (README.md of the published model folder).
    """
    import json

    from whisper_moe_kfp import runtime

    published = runtime.publish(output_s3_uri, run_id, run_name, checkpoint.path, checkpoint.uri,
                                evaluation.path, report.path, params_yaml, pipeline_name, model_card.path)
    runtime.write_text(pointer.path, json.dumps(published, indent=2) + "\n")
    made = runtime.lineage_metadata(published["lineage"])
    pointer.metadata.update({"uri": published["uri"], "published": published["published"], **made})
    model_card.metadata.update({"uri": published["uri"], **made})
    print(f"pointer: {json.dumps(published)}")
