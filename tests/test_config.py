"""The configuration schema: one set of defaults, every key and value checked at load time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from whisper_moe.config import (
    DEFAULT_PARAMS,
    ConfigError,
    check_params,
    inference_routing,
    load_params,
    require,
    set_dotted,
)

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


def leaf_lines(node, prefix=""):
    """{dotted key: (value, line number)} for every scalar or list in a composed YAML mapping."""
    found = {}
    for key_node, value_node in node.value:
        dotted = f"{prefix}{key_node.value}"
        if isinstance(value_node, yaml.MappingNode):
            found.update(leaf_lines(value_node, dotted + "."))
        else:
            found[dotted] = value_node.start_mark.line
    return found


def flat(params, prefix=""):
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_params_yaml_equals_the_defaults_except_on_commented_lines():
    text = PARAMS_YAML.read_text()
    lines = text.splitlines()
    values = flat(load_params(PARAMS_YAML))
    defaults = flat(DEFAULT_PARAMS)
    assert set(values) == set(defaults)
    line_of = leaf_lines(yaml.compose(text))
    assert set(line_of) == set(defaults), "params.yaml should spell out every key"
    differing = [key for key in defaults if values[key] != defaults[key]]
    assert differing, "params.yaml holds the demo's sizes, which differ from the defaults"
    uncommented = [key for key in differing if "#" not in lines[line_of[key]]]
    assert not uncommented, f"params.yaml differs from the schema without a comment saying why: {uncommented}"


def write(folder, text):
    path = folder / "params.yaml"
    path.write_text(text)
    return path


def test_a_nested_typo_in_the_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown parameter 'train\.lrr'.*did you mean train\.lr"):
        load_params(write(tmp_path, "train:\n  lrr: 0.5\n"))


def test_a_value_where_a_section_belongs_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"train is a section .* got 5"):
        load_params(write(tmp_path, "train: 5\n"))


def test_a_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: [0.1\n  epochs: 2\n")
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:") and "invalid YAML" in message
    assert "\n" not in message


@pytest.mark.parametrize("layer, key, allowed", [
    ({"data": {"data_percent": 150}}, "data.data_percent=150", r"\(0, 100\]"),
    ({"train": {"batch_size": 0}}, "train.batch_size=0", ">= 1"),
    ({"train": {"lr": "abc"}}, "train.lr='abc'", "a number"),
    ({"routing": {"mode": "hard"}}, "routing.mode='hard'", "soft | topk | curriculum"),
    ({"runtime": {"precision": "half"}}, "runtime.precision='half'", "fp32 | mixed | bf16 | fp16"),
    ({"runtime": {"device": "gpu"}}, "runtime.device='gpu'", "cuda:N"),
    ({"cluster": {"plot": "yes"}}, "cluster.plot='yes'", "true or false"),
    ({"model": {"lora": {"target_modules": "q_proj"}}}, "model.lora.target_modules", "list"),
])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(layer, key, allowed):
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}.*{allowed}"):
        check_params(layer)


def test_numbers_written_as_yaml_text_are_numbers():
    params = check_params({"train": {"lr": "3e-4", "epochs": 4.0}})
    assert params["train"]["lr"] == 3e-4 and params["train"]["epochs"] == 4


def test_only_true_and_false_are_booleans_as_in_dvc(tmp_path):
    """YAML 1.2, as DVC reads params.yaml: `off` is text, `yes` is no boolean."""
    from whisper_moe.cli.params import parse_override

    assert parse_override("evaluate.oracle_routing=off") == ("evaluate.oracle_routing", "off")
    assert parse_override("evaluate.compare_base=false") == ("evaluate.compare_base", False)
    params_file = tmp_path / "params.yaml"
    params_file.write_text("evaluate:\n  oracle_routing: off\n  compare_base: False\n")
    params = load_params(params_file)
    assert params["evaluate"]["oracle_routing"] == "off" and params["evaluate"]["compare_base"] is False
    params_file.write_text("evaluate:\n  compare_base: yes\n")
    with pytest.raises(ConfigError, match=r"compare_base='yes': expected true or false"):
        load_params(params_file)


def test_an_override_is_checked_when_it_is_set():
    params = load_params()
    with pytest.raises(ConfigError, match=r"-S: train\.lr='abc'"):
        set_dotted(params, "train.lr", "abc")
    with pytest.raises(ConfigError, match=r"unknown parameter 'regular'"):
        set_dotted(params, "regular.num_experts", 4)
    set_dotted(params, "runtime.precision", "mixed")
    assert params["runtime"]["precision"] == "mixed"


def test_rules_between_keys():
    with pytest.raises(ConfigError, match="data.manifest_dir"):
        check_params({"data": {"source": "manifest"}})
    with pytest.raises(ConfigError, match="cluster.min_clusters=5 is above cluster.max_clusters=3"):
        check_params({"cluster": {"min_clusters": 5, "max_clusters": 3}})
    with pytest.raises(ConfigError, match="routing.top_k=3 is above model.num_experts=2"):
        check_params({"model": {"num_experts": 2}, "routing": {"top_k": 3}})
    # a single LoRA (one expert) under the default top-2 routing: nothing to route, no error
    assert check_params({"model": {"num_experts": 1}})["routing"]["mode"] == "topk"


def test_a_required_value_names_its_key():
    with pytest.raises(ConfigError, match=r"^model\.num_experts must be specified: because"):
        require(load_params(), "model.num_experts", "because")


def test_one_key_per_quantity():
    assert "regular" not in DEFAULT_PARAMS
    assert set(DEFAULT_PARAMS["runtime"]) == {"device", "precision", "num_workers"}
    assert not {"device", "fp16", "num_workers"} & set(DEFAULT_PARAMS["train"])


@pytest.mark.parametrize("mode, final", [("soft", "soft"), ("topk", "topk"), ("curriculum", "topk")])
def test_the_trained_models_routing_is_decided_by_the_mode(mode, final):
    assert inference_routing({"mode": mode, "top_k": 2}) == final


@pytest.mark.parametrize("precision, expected", [
    ("fp32", (None, False)), ("mixed", ("bfloat16", False)), ("bf16", ("bfloat16", False)),
    ("fp16", ("float16", True)),
])
def test_each_precision_names_its_autocast_type_and_loss_scaling_on_cpu(precision, expected):
    import torch

    from whisper_moe.training.runtime import mixed_precision

    dtype, scaling = mixed_precision(torch.device("cpu"), precision)
    assert (dtype and str(dtype).removeprefix("torch."), scaling) == expected


def test_extra_test_sets_are_a_mapping_of_folder_safe_names_to_manifests():
    params = load_params(PARAMS_YAML)
    assert params["evaluate"]["extra_test_sets"] == {}
    set_dotted(params, "evaluate.extra_test_sets.general", "data/general/test.jsonl")
    assert params["evaluate"]["extra_test_sets"] == {"general": "data/general/test.jsonl"}
    with pytest.raises(ConfigError, match="expected a mapping of names to text values"):
        check_params({"evaluate": {"extra_test_sets": ["data/general/test.jsonl"]}})
    with pytest.raises(ConfigError, match=r"name '\.\./x'.*names a folder"):
        check_params({"evaluate": {"extra_test_sets": {"../x": "a.jsonl"}}})
