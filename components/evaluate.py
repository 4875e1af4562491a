"""evaluate-moe: WER/CER overall and per group, routing statistics, the HTML report."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.images import CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def evaluate_moe(
    params_yaml: str,
    dataset: Input[Dataset],
    checkpoint: Input[Model],
    training_log: Input[Artifact],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
    gate_confusion: Output[ClassificationMetrics],
    gate: Input[Model] = None,
):
    """Decode the test split with the trained MoE (and the base model) and report the results.

    Args:
        params_yaml: Resolved configuration (YAML).
        dataset: Validated manifests; the test split is evaluated.
        checkpoint: The trained MoE checkpoint.
        training_log: The training folder (its curves go into the report).
        gate: Optional pretrained gate; its confusion matrix is shown when it has one.

    Returns:
        evaluation: metrics.json (with the test set's sha256), predictions.jsonl, per-group tables, plots and data_source.json.
        metrics: WER and CER overall and per group for the MoE, the base model and oracle routing.
        report: The evaluation report (WER per group, expert usage, training curves, worst utterances).
        gate_confusion: The pretrained gate's confusion matrix on its held-out embeddings (pretrained MoE only).
    """
    from pathlib import Path

    from whisper_moe import artifacts
    from whisper_moe.stages import evaluate
    from whisper_moe_kfp import runtime
    from whisper_moe_kfp.parameters import params_from_yaml

    params = params_from_yaml(params_yaml)
    out_dir = Path(evaluation.path)
    result = evaluate.run(params, checkpoint_dir=checkpoint.path,
                          test_manifest=artifacts.split_manifest(dataset.path, "test"), out_dir=out_dir,
                          train_dir=training_log.path)
    runtime.log_evaluation(metrics, result)
    runtime.carry_data_source(dataset.path, out_dir)
    made = runtime.artifact_lineage(params_yaml, dataset.path)  # the Metrics' metadata is the UI's numbers
    evaluation.metadata.update(made)
    report.metadata.update(made)
    runtime.write_text(report.path, (out_dir / artifacts.EVALUATION_REPORT).read_text())
    confusion = artifacts.gate_confusion(gate.path) if gate is not None else None
    if confusion is not None:
        gate_confusion.log_confusion_matrix(*confusion)
