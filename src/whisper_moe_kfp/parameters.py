"""The pipeline parameters users tune in the Kubeflow UI, and how they map onto params.yaml.

Both pipelines take the configuration as `params_yaml` (YAML in params.yaml's format)
plus a few commonly tuned values as their own parameters, so the run form in the UI
shows them with their defaults. The resolve-params task applies those values on top of
`params_yaml`, giving every later task the same nested dict the CLI builds from
params.yaml and `-S key=value`. One table here serves the pipelines (defaults), the
resolve-params component (where each value goes) and the `whisper-moe kfp` client
(which value of params.yaml fills each parameter).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from whisper_moe.config import (
    DEFAULT_PARAMS,
    ConfigError,
    check_params,
    get_dotted,
    load_params,
    read_yaml,
    set_dotted,
    yaml_error_line,
)

# The demo's regular MoE: how many experts the regular pipeline trains when params.yaml
# leaves model.num_experts null (as it must, so the pretrained pipeline's clustering
# decides there). dvc.yaml's regular_train stage uses the same number (a test checks).
REGULAR_NUM_EXPERTS = 4


@dataclass(frozen=True)
class TunedParameter:
    """A pipeline parameter that overrides one params.yaml key.

    Its default (and the client's value) is read from `key`; `fallback` is the default
    when params.yaml leaves that key null. Descriptions live in the pipelines'
    docstrings, which Kubeflow shows in the run form.
    """

    name: str
    key: str
    type: type
    fallback: Any = None


COMMON = (
    TunedParameter("mode", "mode", str),
    TunedParameter("base_model", "model.base_model", str),
    TunedParameter("epochs", "train.epochs", int),
    TunedParameter("batch_size", "train.batch_size", int),
    TunedParameter("gradient_accumulation_steps", "train.gradient_accumulation_steps", int),
    TunedParameter("learning_rate", "train.lr", float),
    TunedParameter("routing_mode", "routing.mode", str),
    TunedParameter("top_k", "routing.top_k", int),
    TunedParameter("data_percent", "data.data_percent", float),
)
REGULAR_ONLY = (TunedParameter("num_experts", "model.num_experts", int, REGULAR_NUM_EXPERTS),)
PRETRAINED_ONLY = (
    TunedParameter("embedding_percent", "embed.embedding_percent", float),
    TunedParameter("clustering_algorithm", "cluster.algorithm", str),
    TunedParameter("max_clusters", "cluster.max_clusters", int),
)
REGULAR_PARAMETERS = COMMON + REGULAR_ONLY
PRETRAINED_PARAMETERS = COMMON + PRETRAINED_ONLY
ALL_PARAMETERS = {p.name: p for p in COMMON + REGULAR_ONLY + PRETRAINED_ONLY}

# Pipeline parameters that are not params.yaml keys: where the data comes from and goes to.
DATA_PARAMETERS = ("dvc_repo", "dvc_rev", "dvc_path", "data_s3_uri", "data_dir", "output_s3_uri")


def params_yaml_default(params_path: str | Path | None) -> str:
    """params.yaml as one line of YAML: the keys whose values differ from the built-in defaults.

    One line because the compiler copies parameter defaults into the spec's comment
    header, where a multi-line default would make the spec invalid YAML; only the
    differences because the rest is what every task starts from anyway.
    """
    differences = changed_keys(DEFAULT_PARAMS, load_params(params_path))
    return yaml.safe_dump(differences, default_flow_style=True, width=1 << 20, sort_keys=False).strip()


def changed_keys(base: dict, params: dict) -> dict:
    """The nested part of params whose values differ from base."""
    changed = {}
    for key, value in params.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            nested = changed_keys(base[key], value)
            if nested:
                changed[key] = nested
        elif key not in base or base[key] != value:
            changed[key] = value
    return changed


def pipeline_defaults(params_path: str | Path | None, parameters) -> dict[str, Any]:
    """Default of each pipeline parameter: params.yaml (one line) and the values it sets."""
    params = load_params(params_path)
    defaults: dict[str, Any] = {"params_yaml": params_yaml_default(params_path)}
    for parameter in parameters:
        value = get_dotted(params, parameter.key)
        defaults[parameter.name] = typed_default(parameter, parameter.fallback if value is None else value)
    return defaults


def typed_default(parameter: TunedParameter, value):
    """The value as the parameter's type (Kubeflow checks it): 100 -> 100.0, '1e-3' -> 0.001."""
    where = f"params.yaml {parameter.key}"
    if value is None:
        raise ValueError(f"{where} is null, but the pipeline parameter {parameter.name!r} needs a "
                         "value; set it in params.yaml")
    if parameter.type is str:
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}={value!r}: expected a number for {parameter.name!r}") from None
    if parameter.type is int:
        if isinstance(value, bool) or number != int(number):
            raise ValueError(f"{where}={value!r}: expected a whole number for {parameter.name!r}")
        return int(number)
    return number


def params_from_yaml(text: str) -> dict:
    """The nested params dict from params.yaml text, checked exactly as the CLI checks it."""
    try:
        from_text = read_yaml(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(yaml_error_line(error, "params_yaml")) from None
    return check_params(from_text, "params_yaml")


def apply_pipeline_values(params: dict, values: dict[str, Any]) -> dict:
    """Write each given pipeline parameter value (None: not given) to its params key."""
    for name, value in values.items():
        if value is None:
            continue
        if name not in ALL_PARAMETERS:
            raise KeyError(f"unknown pipeline parameter {name!r}")
        set_dotted(params, ALL_PARAMETERS[name].key, value, source=f"pipeline parameter {name}")
    return params


def resolve_params_yaml(params_yaml: str, values: dict[str, Any]) -> str:
    """params_yaml with the pipeline's values applied, as YAML for the later tasks."""
    params = check_params(apply_pipeline_values(params_from_yaml(params_yaml), values), "params_yaml")
    return yaml.safe_dump(params, sort_keys=False)


def pipeline_arguments(params: dict, parameters) -> dict[str, Any]:
    """Arguments for a run: params_yaml plus each tuned parameter read from the same params."""
    arguments: dict[str, Any] = {"params_yaml": yaml.safe_dump(params, sort_keys=False)}
    for parameter in parameters:
        value = get_dotted(params, parameter.key)
        if value is not None:
            arguments[parameter.name] = typed_default(parameter, value)
    return arguments
