"""One module per pipeline stage, each a plain `run(params, **paths) -> dict`.

The CLI, `dvc repro` (through the CLI) and the Kubeflow components all call these.
"""
