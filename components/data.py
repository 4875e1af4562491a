"""prepare-data: fetch the training data (DVC, S3, a volume or the demo corpus) and validate it."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prepare_data(
    params_yaml: str,
    dataset: Output[Dataset],
    data_report: Output[Markdown],
    dvc_repo: str = "",
    dvc_rev: str = "",
    dvc_path: str = "",
    data_s3_uri: str = "",
    data_dir: str = "",
    data_root: str = "/data",
):
    """Fetch the training data and write validated train/dev/test manifests with their audio.

    The data comes from a DVC-versioned folder (dvc_repo + dvc_path at dvc_rev), an
    s3:// prefix, a mounted folder, or, with none of them, the source params_yaml names
    (the synthetic demo corpus by default). Unusable utterances are skipped with a
    counted reason; the task stops, naming files, when more than data.max_skip_fraction
    of a split is unusable.

    Args:
        params_yaml: Resolved configuration (YAML).
        dvc_repo: Git URL of a DVC repository; empty: not used.
        dvc_rev: Revision of dvc_repo; empty: its default branch.
        dvc_path: Data folder inside dvc_repo (train/dev/test.jsonl and audio).
        data_s3_uri: s3://bucket/prefix of a data folder; empty: not used.
        data_dir: Data folder on a mounted volume; empty: not used.
        data_root: Where the data volume is mounted in every task that reads data
            (pipelines/placement.py); a data_dir there is read in place, not copied.

    Returns:
        dataset: Folder with validated train/dev/test.jsonl, their audio and data_report.json.
        data_report: Kept and skipped utterances per split, with reasons.
    """
    from pathlib import Path

    from whisper_moe.stages import data as data_stage
    from whisper_moe_kfp import runtime
    from whisper_moe_kfp.parameters import params_from_yaml

    params = params_from_yaml(params_yaml)
    dataset_dir = Path(dataset.path)
    source = runtime.fetch_training_data(
        dataset_dir / runtime.SOURCE_FOLDER, dvc_repo=dvc_repo, dvc_rev=dvc_rev,
        dvc_path=dvc_path, data_s3_uri=data_s3_uri, data_dir=data_dir,
        data_root=data_root)
    params = runtime.point_data_stage_at(params, source, dataset_dir)
    data_stage.run(params, dataset_dir)
    dataset.metadata.update({"source": runtime.describe_source(source)})
    runtime.write_text(data_report.path, runtime.data_report_markdown(dataset_dir, source))
