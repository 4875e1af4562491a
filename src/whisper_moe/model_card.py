"""A Hugging Face-style model card (`README.md`) for a trained whisper-moe model folder.

The YAML front matter carries a `model-index` (test WER and CER) that the Hub and other
tools read; the text states the same numbers overall and per group beside the base
model's on the same test set, where the data came from, the lineage, and what the model
is and is not fit for. Every figure comes from the evaluation's metrics.json and the
folder's lineage.json: nothing is typed by hand.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from whisper_moe.fsio import write_text_atomic

MODEL_CARD_FILE = "README.md"
PIPELINE_NAMES = {"pretrained": "pretrained MoE (clustered experts and gate pretrained, then joint training)",
                  "regular": "regular MoE (gate and experts trained jointly from scratch)"}


def render(metrics: dict, lineage: dict) -> str:
    """The model card's text for a model evaluated as `metrics`, made as `lineage` says."""
    params = lineage.get("params") or {}
    pipeline = lineage.get("pipeline")
    name = f"whisper-moe-{pipeline}" if pipeline else "whisper-moe"
    front = {
        "base_model": lineage.get("base_model"),
        "pipeline_tag": "automatic-speech-recognition",
        "tags": ["whisper", "lora", "mixture-of-experts", "whisper-moe"],
        "model-index": [{"name": name, "results": [{
            "task": {"type": "automatic-speech-recognition", "name": "Speech recognition"},
            "dataset": {"name": describe_data(lineage.get("data") or {}), "type": "custom", "split": "test"},
            "metrics": [{"type": "wer", "name": "Test WER (%)", "value": percent(metrics["moe"]["wer"])},
                        {"type": "cer", "name": "Test CER (%)", "value": percent(metrics["moe"]["cer"])}],
        }]}],
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {name}", "",
             f"Whisper `{lineage.get('base_model')}` (frozen) with a mixture of "
             f"{experts(params, metrics)} LoRA experts chosen per utterance by a learned gate"
             + (f"; {PIPELINE_NAMES[pipeline]}" if pipeline in PIPELINE_NAMES else "") + ".",
             "", "## Results on the test set", ""]
    lines += results_table(metrics) + [""] + group_table(metrics) + [""]
    test_set = metrics.get("test_set") or {}
    if test_set:
        lines += [f"{test_set.get('utterances')} test utterances (`{test_set.get('manifest')}`, sha256 "
                  f"`{test_set.get('manifest_sha256', '')[:16]}`); speakers never seen in training. "
                  "WER and CER are fractions after the project's transcript normalisation.", ""]
    interval = metrics["moe"].get("wer_ci95")
    if interval:
        lines += [f"95 % speaker-bootstrap interval of the WER: {interval[0]:.4f} to {interval[1]:.4f}.", ""]
    lines += ["## Training data", "", *data_lines(lineage.get("data") or {}), "",
              "## Lineage", "", *lineage_lines(lineage, params), "",
              "## Intended use", "",
              "Transcribing English speech of the kinds (groups) present in the training data, "
              "where the groups' own experts help the base model; comparing routed experts with "
              "the base model per group. Load the folder with `whisper_moe.api.load(folder)` or "
              "`whisper-moe transcribe --checkpoint <folder> audio.wav`.", "",
              "## Limitations", "", *limitation_lines(metrics, lineage), ""]
    return "\n".join(lines)


def write(folder: str | Path, metrics: dict, lineage: dict) -> Path:
    return write_text_atomic(Path(folder) / MODEL_CARD_FILE, render(metrics, lineage))


def percent(value: float) -> float:
    return round(100.0 * float(value), 2)


def experts(params: dict, metrics: dict) -> str:
    """The evaluated checkpoint's expert count (its routing statistics have one entry per
    expert), else the params' (null there: the clustering chose it)."""
    share = (metrics.get("routing") or {}).get("expert_share")
    count = len(share) if share else (params.get("model") or {}).get("num_experts")
    return str(count) if count else "clustering-chosen"


def results_table(metrics: dict) -> list[str]:
    rows = ["| system | WER | CER |", "| --- | --- | --- |"]
    labels = {"moe": "this model (learned routing)", "base": "base model, same test set",
              "oracle": "oracle routing by group"}
    for system, label in labels.items():
        if system in metrics:
            rows.append(f"| {label} | {metrics[system]['wer']:.4f} | {metrics[system]['cer']:.4f} |")
    if "base" not in metrics:
        rows.append("| base model | not measured (evaluate.compare_base was false) | |")
    return rows


def group_table(metrics: dict) -> list[str]:
    groups = metrics["moe"].get("per_group", {})
    base = (metrics.get("base") or {}).get("per_group", {})
    rows = ["| group | utterances | WER | CER | base WER |", "| --- | --- | --- | --- | --- |"]
    for group, values in sorted(groups.items()):
        base_wer = f"{base[group]['wer']:.4f}" if group in base else "-"
        rows.append(f"| {group} | {values.get('n', '-')} | {values['wer']:.4f} | {values['cer']:.4f} "
                    f"| {base_wer} |")
    return rows


def describe_data(data: dict) -> str:
    kind = data.get("kind")
    if kind == "dvc":
        return f"{data.get('repo')}:{data.get('path')}@{(data.get('commit') or data.get('rev') or '')[:12]}"
    if kind == "s3":
        return str(data.get("uri"))
    if kind == "dvc-stage":
        return f"{data.get('path')} (md5 {str(data.get('md5'))[:12]})"
    return str(data.get("source") or data.get("path") or kind or "unknown")


def data_lines(data: dict) -> list[str]:
    kind = data.get("kind")
    if kind == "dvc":
        lines = [f"- DVC repository `{data.get('repo')}`, path `{data.get('path')}`",
                 f"- revision `{data.get('rev')}`, resolved to commit `{data.get('commit')}`",
                 f"- DVC md5 of the data folder: `{data.get('md5')}`"]
    elif kind == "s3":
        lines = [f"- S3 prefix `{data.get('uri')}`",
                 f"- sha256 of the fetched folder (paths and bytes): `{data.get('sha256')}`"]
    elif kind == "folder":
        lines = [f"- folder `{data.get('path')}`", f"- sha256 of its contents: `{data.get('sha256')}`"]
    elif kind == "dvc-stage":
        lines = [f"- `{data.get('path')}`, written by the `{data.get('stage')}` stage of `dvc repro`",
                 f"- DVC md5 of the data folder: `{data.get('md5')}`"]
    else:
        lines = [f"- as params.yaml sets it: data.source `{data.get('source')}`"]
    if data.get("source") == "demo" or (data.get("params_source") == "demo"):
        lines.append("- the synthetic demo corpus of speaker groups (espeak-ng voices), not real speech")
    return lines


def lineage_lines(lineage: dict, params: dict) -> list[str]:
    code = lineage.get("code") or {}
    dirty = " (with uncommitted changes)" if code.get("dirty") else ""
    model, train = params.get("model") or {}, params.get("train") or {}
    lora = model.get("lora") or {}
    routing = (params.get("routing") or {}).get("mode")
    return [f"- code: commit `{code.get('commit')}`{dirty}",
            f"- image: {image_line(lineage)}",
            f"- base model: `{lineage.get('base_model')}`",
            f"- run: `{lineage.get('run_id') or '-'}`, pipeline `{lineage.get('pipeline') or '-'}`, "
            f"created {lineage.get('created_utc')}",
            f"- settings: mode `{params.get('mode')}`, LoRA rank {lora.get('rank')} on "
            f"{', '.join(lora.get('target_modules') or [])}, routing `{routing}`, "
            f"{epochs_text(params, lineage.get('pipeline'))}, lr {train.get('lr')}; "
            "all resolved params in `lineage.json`"]


def epochs_text(params: dict, pipeline: str | None) -> str:
    """The passes over the training data; in the pretrained pipeline split into expert
    pretraining and joint training, whose epochs `train` derives from both sections."""
    section = "quick" if params.get("mode") == "quick" else "train"
    epochs = (params.get(section) or {}).get("epochs")
    pretraining = params.get("pretrain_experts") or {}
    if pipeline != "pretrained" or epochs is None:
        return f"{epochs} epochs"
    pretrain_epochs = int(pretraining.get("epochs", 0))
    joint = int(epochs)
    if pretraining.get("count_toward_train_epochs"):
        joint = max(1, joint - pretrain_epochs)
    return f"{pretrain_epochs + joint} epochs ({pretrain_epochs} of expert pretraining, {joint} joint)"


def image_line(lineage: dict) -> str:
    reference, digest = lineage.get("image"), lineage.get("image_digest")
    if not reference:
        return "not recorded (run outside a container)"
    if digest:
        return f"`{reference}`"
    return f"`{reference}` (a tag, not pinned by digest: it may since name other bytes)"


def limitation_lines(metrics: dict, lineage: dict) -> list[str]:
    test_set = metrics.get("test_set") or {}
    small = [g for g, v in (metrics["moe"].get("per_group") or {}).items() if v.get("n", 0) < 100]
    lines = ["- Measured on one held-out test set only; accents, recording conditions and speech "
             "types absent from the training data are not covered and may be worse than the base model."]
    if small:
        lines.append(f"- Groups with fewer than 100 test utterances ({', '.join(sorted(small))}): "
                     "their WER is a rough estimate.")
    if (lineage.get("params") or {}).get("mode") == "quick":
        lines.append("- Trained in quick mode (a smoke run with capped data and epochs).")
    if (lineage.get("data") or {}).get("source") == "demo":
        lines.append("- Trained and tested on synthetic speech: a demonstration of the method, "
                     "not a model for real users.")
    if not test_set:
        lines.append("- The test set's hash was not recorded: compare with other models with care.")
    return lines
