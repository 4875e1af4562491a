"""Kubeflow Pipelines side of whisper-moe: the `whisper-moe kfp` client and the helpers
the pipeline components run inside the container.

Kept apart from the `whisper_moe` library so that the library never imports kfp or dvc;
nothing here imports kfp at module level either (the client imports it when called).
"""
