"""train-moe: joint training of gate and experts. Both pipelines use this one component."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def train_moe(
    params_yaml: str,
    dataset: Input[Dataset],
    checkpoint: Output[Model],
    training_log: Output[Artifact],
    training_metrics: Output[Metrics],
    init: Input[Model] = None,
    embeddings: Input[Dataset] = None,
    run_id: str = "",
    checkpoint_root: str = "/checkpoints",
    processes: int = 0,
):
    """Train the gate and all LoRA experts together on the training split.

    Without `init` (regular MoE) gate and experts start random and model.num_experts
    sets their number; with `init` (pretrained MoE) they start from the pretrained gate
    and experts. The base Whisper stays frozen.

    Args:
        params_yaml: Resolved configuration (YAML).
        dataset: Validated train/dev/test manifests with audio.
        init: Optional checkpoint of pretrained gate and experts.
        embeddings: Optional output of the embed task: the training utterances it holds are
            not encoded again for the gate inputs (when it pooled the same way).
        run_id: The run's id; with checkpoint_root it names the folder a retry resumes from.
        checkpoint_root: Volume that outlives the pod (pipelines/placement.py mounts it);
            training checkpoints there and a retried attempt of the same run resumes.
        processes: Data-parallel training processes; 0: one per GPU of the pod (its
            nvidia.com/gpu limit), one on CPU. Above 1 torchrun starts them and rank 0 writes.

    Returns:
        checkpoint: The MoE checkpoint (moe_config.json + model.safetensors).
        training_log: train_log.jsonl, training_curves.png and train_metrics.json.
        training_metrics: Final losses, steps, time and trainable parameters.
    """
    from pathlib import Path

    from whisper_moe import artifacts
    from whisper_moe.stages import train
    from whisper_moe.training.runtime import init_distributed
    from whisper_moe_kfp import runtime
    from whisper_moe_kfp.parameters import params_from_yaml

    params = params_from_yaml(params_yaml)
    durable_dir = runtime.durable_work_dir(checkpoint_root, run_id, "train-moe")
    train_dir = durable_dir or Path(training_log.path)
    train_manifest = artifacts.split_manifest(dataset.path, "train")
    dev_manifest = artifacts.split_manifest(dataset.path, "dev")
    init_dir = init.path if init is not None else None
    embeddings_dir = embeddings.path if embeddings is not None else None
    world = runtime.training_processes(processes, params)
    if world > 1:  # the same CLI command as the Kubernetes job, under torchrun
        result = runtime.train_in_processes(world, params_yaml, train_manifest, dev_manifest,
                                            train_dir, init_dir, resume=durable_dir is not None,
                                            embeddings_dir=embeddings_dir)
    else:
        rank, world_size = init_distributed(params)  # the set-up of the CLI (1 unless under torchrun)
        result = train.run(params, train_manifest, dev_manifest, train_dir, init_dir=init_dir,
                           resume=durable_dir is not None, rank=rank, world_size=world_size,
                           embeddings_dir=embeddings_dir)
    runtime.finish_training_folder(train_dir, checkpoint.path)
    if durable_dir is not None:
        runtime.finish_durable_folder(durable_dir, training_log.path)
    checkpoint.metadata.update({"num_experts": result["num_experts"], "framework": "whisper-moe",
                                "training_processes": world})
    checkpoint.metadata.update(runtime.artifact_lineage(params_yaml, dataset.path, run_id))
    runtime.log_numbers(training_metrics, result)
