"""resolve-data and prepare-data: which data a run trains on, then that data fetched and validated.

resolve-data runs every time and downloads nothing: it turns the named source (a DVC
revision, an S3 prefix, a folder) into an identity that changes exactly when the data does.
prepare-data takes that identity as an input and is cached, so a run on data an earlier
run already fetched reuses that run's dataset artifact instead of downloading it again.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def resolve_data(
    params_yaml: str,
    dvc_repo: str = "",
    dvc_rev: str = "",
    dvc_path: str = "",
    data_s3_uri: str = "",
    data_dir: str = "",
    data_root: str = "/data",
) -> NamedTuple("DataIdentity", identity=str, data_params_yaml=str):
    """Name the data a run trains on by what it is now, without downloading it.

    The identity is the DVC md5 of dvc_path at dvc_rev (its commit when the path has no
    md5 of its own), a hash of the S3 listing (key, size, ETag of every object) or of a
    folder's files (name, size, modification time); with no source, the data params decide.
    A branch or prefix that changes under the same name thus changes prepare-data's cache key.

    Args:
        params_yaml: Resolved configuration (YAML).
        dvc_repo: Git URL of a DVC repository; empty: not used.
        dvc_rev: Revision of dvc_repo; empty: its default branch.
        dvc_path: Data folder inside dvc_repo.
        data_s3_uri: s3://bucket/prefix of a data folder; empty: not used.
        data_dir: Data folder on a mounted volume; empty: not used.
        data_root: Where the data volume is mounted (pipelines/placement.py).

    Returns:
        identity: JSON of the data's identity.
        data_params_yaml: The settings the data stage reads, and no others, so that tuning
            training leaves prepare-data's cache key alone.
    """
    import json

    import yaml

    from whisper_moe_kfp import runtime
    from whisper_moe_kfp.parameters import params_from_yaml

    identity = runtime.identify_training_data(
        dvc_repo=dvc_repo, dvc_rev=dvc_rev, dvc_path=dvc_path, data_s3_uri=data_s3_uri,
        data_dir=data_dir, data_root=data_root)
    print(f"data identity: {identity}")
    data_params = runtime.data_stage_params(params_from_yaml(params_yaml))

    class DataIdentity(NamedTuple):  # the outputs, in the order the return annotation names them
        identity: str
        data_params_yaml: str

    return DataIdentity(json.dumps(identity, sort_keys=True), yaml.safe_dump(data_params, sort_keys=True))


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
    data_identity: str = "",
):
    """Fetch the training data and write validated train/dev/test manifests with their audio.

    The data comes from a DVC-versioned folder (dvc_repo + dvc_path at dvc_rev), an
    s3:// prefix, a mounted folder, or, with none of them, the source params_yaml names
    (the synthetic demo corpus by default). Unusable utterances are skipped with a
    counted reason; the task stops, naming files, when more than data.max_skip_fraction
    of a split is unusable.

    Args:
        params_yaml: Resolved configuration (YAML); in the pipelines, only the data settings.
        dvc_repo: Git URL of a DVC repository; empty: not used.
        dvc_rev: Revision of dvc_repo; empty: its default branch.
        dvc_path: Data folder inside dvc_repo (train/dev/test.jsonl and audio).
        data_s3_uri: s3://bucket/prefix of a data folder; empty: not used.
        data_dir: Data folder on a mounted volume; empty: not used.
        data_root: Where the data volume is mounted in every task that reads data
            (pipelines/placement.py); a data_dir there is read in place, not copied.
        data_identity: resolve-data's identity of the data (JSON); the source must still hold
            that data, else the task stops. Empty: not checked.

    Returns:
        dataset: Folder with validated train/dev/test.jsonl, their audio and data_report.json.
        data_report: Kept and skipped utterances per split, with reasons.
    """
    import json
    from pathlib import Path

    from whisper_moe.stages import data as data_stage
    from whisper_moe_kfp import runtime
    from whisper_moe_kfp.parameters import params_from_yaml

    params = params_from_yaml(params_yaml)
    dataset_dir = Path(dataset.path)
    source = runtime.fetch_training_data(
        dataset_dir / runtime.SOURCE_FOLDER, dvc_repo=dvc_repo, dvc_rev=dvc_rev,
        dvc_path=dvc_path, data_s3_uri=data_s3_uri, data_dir=data_dir,
        data_root=data_root, identity=json.loads(data_identity) if data_identity else None)
    params = runtime.point_data_stage_at(params, source, dataset_dir)
    data_stage.run(params, dataset_dir)
    dataset.metadata.update({"source": runtime.describe_source(source)})
    runtime.write_text(data_report.path, runtime.data_report_markdown(dataset_dir, source))
