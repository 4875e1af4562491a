"""The one configuration: a typed schema that holds every default and checks every value.

A run's parameters are the schema's defaults, then a params file, then `-S key=value`
overrides, then flags. Each layer is checked as it is applied, at every nesting level,
so a typo, a wrong type or an out-of-range value stops the run before any work starts,
with a message naming the key, the value and what is allowed. Stages receive the
result as a plain nested dict and read their own sections.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from whisper_moe.errors import ConfigError

__all__ = ["ConfigError", "check_params", "defaults", "load_params", "set_dotted"]




def knob(default, *, ge=None, gt=None, le=None, lt=None, choices=None, pattern=None,
         pattern_text=None):
    """A schema field with the values it allows (bounds, choices or a regular expression)."""
    rules = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "pattern": pattern,
             "pattern_text": pattern_text}
    rules = {name: rule for name, rule in rules.items() if rule is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=rules)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=rules)
    return field(default=default, metadata=rules)


def section(cls):
    """A nested section field, defaulting to the section's own defaults."""
    return field(default_factory=cls)


@dataclass
class DemoCorpus:
    speakers_per_group: int = knob(11, ge=1)
    utterances_per_speaker: int = knob(12, ge=1)
    groups: list[str] = knob(["en-us", "atypical", "l1-hi", "l1-de"])
    split: list[float] = knob([0.45, 0.1, 0.45])  # train/dev/test shares of each group's speakers
    eval_utterances_per_speaker: int | None = knob(None, ge=1)  # cap for dev and test speakers


@dataclass
class Data:
    source: str = knob("demo", choices=("demo", "manifest", "sap", "hf", "nemo"))
    dir: str = "data/demo"  # the demo corpus or an imported/converted source (data/<source> for others)
    manifest_dir: str | None = None  # source=manifest: a folder with train/dev/test.jsonl
    sap_root: str | None = None  # source=sap: the SAP release root
    hf_dataset: str | None = None  # source=hf: save_to_disk, parquet or audiofolder folder
    hf_audio_column: str = "audio"  # its Audio column (or audio paths)
    hf_text_column: str = "text"  # its transcript column
    hf_speaker_column: str | None = None  # None: each utterance its own speaker
    hf_group_column: str | None = None  # None: one group "all"
    nemo_manifest: str | None = None  # source=nemo: a NeMo manifest, or a folder of train/dev/test ones
    data_percent: float = knob(100.0, gt=0, le=100)  # stratified share of the training split
    max_skip_fraction: float = knob(0.05, ge=0, le=1)  # more unusable input than this stops the run
    max_duration_s: float = knob(30.0, gt=0)
    demo: DemoCorpus = section(DemoCorpus)


@dataclass
class Lora:
    rank: int = knob(16, ge=1)
    alpha: float = knob(32.0, gt=0)
    dropout: float = knob(0.05, ge=0, lt=1)
    target_modules: list[str] = knob(["q_proj", "v_proj"])


@dataclass
class Model:
    base_model: str = "demo"  # 'demo' = tiny.en imported offline; else a hub name or directory
    # Required for training without pretraining. With pretraining it is the number of
    # clusters; null: chosen by silhouette in [cluster.min_clusters, cluster.max_clusters].
    num_experts: int | None = knob(None, ge=1)
    lora: Lora = section(Lora)
    gate_hidden: int = knob(512, ge=1)
    # The frozen base's weights; experts and gate keep float32 master weights.
    dtype: str = knob("float32", choices=("float32", "bfloat16", "float16", "float64"))


@dataclass
class Routing:
    mode: str = knob("topk", choices=("soft", "topk", "curriculum"))  # sparse from step 0: experts see different data
    top_k: int = knob(2, ge=1)
    soft_epochs: int = knob(3, ge=0)  # curriculum: epochs of soft routing before top-k
    temperature_start: float = knob(2.0, gt=0)
    temperature_end: float = knob(1.0, gt=0)
    noise_std: float = knob(0.1, ge=0)  # router noise (training only), relative to each utterance's logit spread
    load_balance_weight: float = knob(0.01, ge=0)  # Switch load balance E * sum f_i P_i per optimizer step
    z_loss_weight: float = knob(0.001, ge=0)
    # per-step nudge of the gate's balance bias, times the logit spread; 0: off; null:
    # 0.1 for a gate trained from scratch, off for a pretrained gate
    balance_bias_rate: float | None = knob(None, ge=0)


@dataclass
class Embed:
    embedding_percent: float = knob(5.0, gt=0, le=100)  # the seed's documented default
    batch_size: int = knob(16, ge=1)


@dataclass
class Cluster:
    algorithm: str = knob("spectral", choices=("spectral", "kmeans", "hdbscan"))
    min_clusters: int = knob(2, ge=1)
    max_clusters: int = knob(8, ge=1)
    min_cluster_size: int = knob(5, ge=2)  # hdbscan only
    pca_components: int = knob(50, ge=1)
    plot: bool = True


@dataclass
class PretrainGate:
    epochs: int = knob(30, ge=1)
    batch_size: int = knob(256, ge=1)
    lr: float = knob(1e-3, gt=0)
    patience: int = knob(5, ge=1)


@dataclass
class PretrainExperts:
    epochs: int = knob(1, ge=1)
    # joint training after expert pretraining runs train.epochs minus these epochs, so every
    # system passes over the training data train.epochs times (false: train.epochs on top)
    count_toward_train_epochs: bool = True
    batch_size: int = knob(8, ge=1)
    lr: float = knob(1e-3, gt=0)


@dataclass
class Train:
    epochs: int = knob(10, ge=1)
    batch_size: int = knob(2, ge=1)  # the seed's --asr-batch-size
    gradient_accumulation_steps: int = knob(8, ge=1)
    lr: float = knob(1e-3, gt=0)
    gate_lr: float = knob(1e-3, gt=0)
    weight_decay: float = knob(0.01, ge=0)
    warmup_ratio: float = knob(0.1, ge=0, le=1)
    max_grad_norm: float = knob(1.0, gt=0)
    eval_every_n_epochs: int = knob(1, ge=1)
    save_every_n_epochs: int = knob(1, ge=1)
    keep_checkpoints: int = knob(2, ge=1)
    max_label_tokens: int = knob(448, ge=1)
    max_nonfinite_in_a_row: int = knob(5, ge=1)


PRECISIONS = ("fp32", "mixed", "bf16", "fp16")


@dataclass
class Runtime:
    """Where and how every computing stage (train, evaluate, embed, pretrain-*, transcribe)
    runs: one section, so no stage keeps its own device or precision setting."""

    device: str = knob("auto", pattern=r"auto|cpu|cuda(:\d+)?|mps",
                       pattern_text="auto, cpu, cuda, cuda:N or mps")
    # fp32: no autocast; mixed: bf16 where the device has it, else fp16 with loss scaling;
    # bf16 / fp16: that autocast type (fp16 with loss scaling).
    precision: str = knob("fp32", choices=PRECISIONS)
    num_workers: int = knob(0, ge=0)  # DataLoader processes decoding audio


@dataclass
class Evaluate:
    batch_size: int = knob(8, ge=1)
    max_new_tokens: int = knob(128, ge=1)
    compare_base: bool = True
    # sap: also the SAP challenge's clipped, two-reference CER; auto: sap when every test
    # row carries `text_with_disfluencies` (as import-sap writes), else standard.
    scoring: str = knob("auto", choices=("auto", "standard", "sap"))
    # {name: manifest}: more test sets (e.g. general speech) scored with the same systems,
    # so that forgetting shows; names become keys of metrics.json and folder names.
    extra_test_sets: dict[str, str] = knob({})
    # oracle routing (each group to one expert) beside the learned gate: auto: the checkpoint's
    # group table, else each group's most frequent top-1 expert on the test set; checkpoint: only
    # the checkpoint's table; off: none (one decoding pass fewer).
    oracle_routing: str = knob("auto", choices=("auto", "checkpoint", "off"))


@dataclass
class Baselines:
    single_lora_rank: int = knob(64, ge=1)  # one LoRA with a 4-expert rank-16 MoE's parameters


@dataclass
class Quick:
    epochs: int = knob(2, ge=1)
    max_train_utterances: int = knob(48, ge=1)
    max_eval_utterances: int = knob(24, ge=1)


@dataclass
class Params:
    seed: int = 42
    mode: str = knob("full", choices=("quick", "full"))  # quick: a smoke run capped by `quick`
    data: Data = section(Data)
    model: Model = section(Model)
    routing: Routing = section(Routing)
    embed: Embed = section(Embed)
    cluster: Cluster = section(Cluster)
    pretrain_gate: PretrainGate = section(PretrainGate)
    pretrain_experts: PretrainExperts = section(PretrainExperts)
    train: Train = section(Train)
    runtime: Runtime = section(Runtime)
    evaluate: Evaluate = section(Evaluate)
    baselines: Baselines = section(Baselines)
    quick: Quick = section(Quick)


def defaults() -> dict:
    """A fresh nested dict of every default."""
    return dataclasses.asdict(Params())


DEFAULT_PARAMS: dict[str, Any] = defaults()


# ---------------------------------------------------------------- checking one layer


def check_layer(layer: Any, source: str, schema: type = Params, prefix: str = "") -> dict:
    """The layer's values converted to their schema types; ConfigError on the first problem.

    A layer may set any subset of keys; every key it sets is checked, at every level.
    """
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(layer, dict):
        raise ConfigError(f"{source}: {where} must be a mapping of keys to values, "
                          f"got {layer!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    checked = {}
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{source}: unknown parameter {dotted!r}{suggestion(key, fields, prefix)}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted} is a section (keys: {', '.join(known(kind))}); "
                                  f"got {value!r}")
            checked[key] = check_layer(value, source, kind, dotted + ".")
        else:
            checked[key] = check_value(value, kind, fields[key].metadata, dotted, source)
    return checked


def known(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def suggestion(key: str, fields: dict, prefix: str) -> str:
    close = difflib.get_close_matches(str(key), list(fields), n=1)
    names = ", ".join(fields)
    hint = f"; did you mean {prefix}{close[0]}?" if close else ""
    return f" (known here: {names}){hint}"


def check_value(value: Any, kind: Any, rules: typing.Mapping, key: str, source: str) -> Any:
    """The value as `kind`, within its rules; ConfigError naming key, value and what is allowed."""
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
    if optional:
        if value is None:
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    converted = convert(value, kind)
    if converted is None:
        allowed = type_text(kind) + (" or null" if optional else "")
        raise ConfigError(f"{source}: {key}={value!r}: expected {allowed}")
    problem = rule_problem(converted, rules)
    if problem:
        raise ConfigError(f"{source}: {key}={value!r}: expected {problem}")
    return converted


def convert(value: Any, kind: Any) -> Any:
    """value as kind, or None when it is not one (YAML 1.1 reads '1e-3' as text: accepted)."""
    if kind is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else None
    if kind is float:
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return None
        return None
    if kind is str:
        return value if isinstance(value, str) else None
    if typing.get_origin(kind) is list:
        (item_kind,) = typing.get_args(kind)
        if not isinstance(value, list):
            return None
        items = [convert(item, item_kind) for item in value]
        return None if any(item is None for item in items) else items
    if typing.get_origin(kind) is dict:
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in value.items()):
            return dict(value)
        return None
    raise TypeError(f"no conversion for {kind}")


def type_text(kind: Any) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    if typing.get_origin(kind) is dict:
        return "a mapping of names to text values"
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        return "a list of numbers" if item is float else "a list of text values"
    return names[kind]


def rule_problem(value: Any, rules: typing.Mapping) -> str | None:
    """What the value should have been, or None when it keeps every rule."""
    if "choices" in rules and value not in rules["choices"]:
        return "one of " + " | ".join(rules["choices"])
    if "pattern" in rules and not re.fullmatch(rules["pattern"], value):
        return rules["pattern_text"]
    low = rules.get("ge", rules.get("gt"))
    high = rules.get("le", rules.get("lt"))
    too_low = ("ge" in rules and value < rules["ge"]) or ("gt" in rules and value <= rules["gt"])
    too_high = ("le" in rules and value > rules["le"]) or ("lt" in rules and value >= rules["lt"])
    if not (too_low or too_high):
        return None
    if high is None:
        return f"a value {'>=' if 'ge' in rules else '>'} {low:g}"
    if low is None:
        return f"a value {'<=' if 'le' in rules else '<'} {high:g}"
    return (f"a value in {'[' if 'ge' in rules else '('}{low:g}, {high:g}"
            f"{']' if 'le' in rules else ')'}")


# ---------------------------------------------------------------- the whole configuration


def check_consistency(params: dict, source: str = "params") -> dict:
    """Rules between keys, checked once every layer is applied."""
    data, cluster, model = params["data"], params["cluster"], params["model"]
    needed = {"manifest": "manifest_dir", "sap": "sap_root"}.get(data["source"])
    if needed and not data[needed]:
        raise ConfigError(f"{source}: data.source={data['source']!r} needs data.{needed} "
                          "(a folder); set it, or pass --manifest-dir / --dataset-root")
    if cluster["min_clusters"] > cluster["max_clusters"]:
        raise ConfigError(f"{source}: cluster.min_clusters={cluster['min_clusters']} is above "
                          f"cluster.max_clusters={cluster['max_clusters']}")
    for name in params["evaluate"]["extra_test_sets"]:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ConfigError(f"{source}: evaluate.extra_test_sets name {name!r}: use letters, digits, "
                              "'_', '-' or '.' (it names a folder)")
    experts = model["num_experts"]
    routed = experts is not None and experts > 1  # one expert (a single LoRA) has nothing to route
    if routed and params["routing"]["mode"] != "soft" and params["routing"]["top_k"] > experts:
        raise ConfigError(f"{source}: routing.top_k={params['routing']['top_k']} is above "
                          f"model.num_experts={experts}; lower top_k or use routing.mode=soft")
    return params


def deep_merge(base: dict, override: dict) -> dict:
    """Return base updated by override, recursing into nested sections."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def check_params(params: dict, source: str = "params") -> dict:
    """A complete, checked configuration from a (possibly partial) nested dict.

    What components and tests pass in is checked like a params file: unknown keys,
    types, ranges and the rules between keys.
    """
    return check_consistency(deep_merge(defaults(), check_layer(params, source)), source)


class Yaml12BoolLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true and false.

    YAML 1.1 also reads on/off/yes/no as booleans, so `evaluate.oracle_routing: off`
    would arrive as False and fail as "expected text"; DVC reads params.yaml as YAML 1.2,
    where `off` is text, and the two readers must agree.
    """


Yaml12BoolLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12BoolLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def read_yaml(text: str) -> Any:
    """A YAML document of parameters (a file, a `-S` value, a pipeline's params_yaml)."""
    return yaml.load(text, Loader=Yaml12BoolLoader)  # noqa: S506 (a SafeLoader subclass)


def read_params_file(path: str | Path) -> dict:
    """The file's mapping; a YAML syntax error becomes one line with the file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such parameter file; run from the project folder (where params.yaml "
            "is) or pass --params FILE"
        )
    try:
        return read_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(yaml_error_line(error, str(path))) from None


def yaml_error_line(error: yaml.YAMLError, source: str) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return f"{source}: invalid YAML: {problem}"
    return f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"


def load_params(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Defaults, then the YAML file (if given), then overrides; all checked.

    A path that does not exist is an error: silently running on the defaults (quick caps,
    the demo model) instead of the intended configuration would waste a whole run.
    """
    params = defaults()
    if path is not None:
        params = deep_merge(params, check_layer(read_params_file(path), str(path)))
    if overrides:
        params = deep_merge(params, check_layer(overrides, "overrides"))
    return check_consistency(params, str(path) if path is not None else "params")


def dotted_layer(dotted_key: str, value: Any) -> dict:
    """{'a': {'b': value}} from 'a.b'."""
    layer: Any = value
    for part in reversed(dotted_key.split(".")):
        layer = {part: layer}
    return layer


def set_dotted(params: dict, dotted_key: str, value: Any, source: str = "-S") -> None:
    """Set params['a']['b'] from 'a.b' after checking the key and the value."""
    checked = check_layer(dotted_layer(dotted_key, value), source)
    params.update(deep_merge(params, checked))


def get_dotted(params: dict, dotted_key: str) -> Any:
    node = params
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"unknown parameter {dotted_key!r}")
        node = node[part]
    return node


def require(params: dict, dotted_key: str, why: str) -> Any:
    """The value of a key that this run cannot do without; ConfigError naming it when unset."""
    value = get_dotted(params, dotted_key)
    if value is None:
        raise ConfigError(f"{dotted_key} must be specified: {why}")
    return value


def inference_routing(routing: dict) -> str:
    """How a trained model routes: soft stays soft; topk and curriculum end in top-k."""
    return "soft" if routing["mode"] == "soft" else "topk"
