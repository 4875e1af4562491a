"""Evaluation: batched greedy decoding with the routed experts, WER/CER overall and per group.

Beside the MoE it decodes the frozen base model on the same audio (its encoder output
is the gate's input anyway) and oracle routing (each group sent to one expert: the
checkpoint's table, or the learned gate's most frequent choice for the group), so users
see what the experts and the gate each contribute. WER is also given under Whisper's own
normaliser, SAP data gets the SAP challenge's scoring, and extra named test sets are
scored by the same systems so that forgetting shows.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from whisper_moe import artifacts
from whisper_moe.config import check_params
from whisper_moe.data.batching import UtteranceDataset, collate_utterances
from whisper_moe.data.features import whisper_features
from whisper_moe.fsio import sha256_of, write_json_atomic, write_text_atomic
from whisper_moe.metrics import cer, clipped_min_reference_errors, wer
from whisper_moe.model.base import decoder_prefix_ids, load_base_model
from whisper_moe.model.decode import greedy_decode, suppressed_token_ids
from whisper_moe.model.io import load_moe
from whisper_moe.model.moe import pool_encoder_output
from whisper_moe.plots import (
    plot_expert_usage,
    plot_training_curves,
    plot_wer_per_group,
    png_data_uri,
)
from whisper_moe.progress import track
from whisper_moe.stages.common import mode_rows, special_ids
from whisper_moe.text import spelling_mapping_of, whisper_normalizer
from whisper_moe.training.runtime import autocast, mixed_precision, resolve_device
from whisper_moe.uncertainty import (
    nmi_permutation_test,
    speaker_bootstrap_wer,
    utterance_word_errors,
)

log = logging.getLogger("whisper_moe.evaluate")

SECOND_REFERENCE = "text_with_disfluencies"  # the manifest key import-sap writes


def run(params: dict, checkpoint_dir=None, test_manifest=None, out_dir=None, base_model=None,
        train_dir=None) -> dict:
    """Evaluate a checkpoint (or, with `base_model`, a plain Whisper) on a test manifest."""
    params = check_params(params)
    if (checkpoint_dir is None) == (base_model is None):
        raise ValueError("evaluate needs exactly one of --checkpoint and --base-model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(params["runtime"]["device"])
    amp_dtype, _ = mixed_precision(device, params["runtime"]["precision"])
    if checkpoint_dir is not None:
        model, tokenizer = load_moe(checkpoint_dir, device, dtype=params["model"]["dtype"])
        whisper = model.base
    else:
        model = None
        whisper, tokenizer = load_base_model(base_model)
        whisper.to(device)
    whisper.eval()
    if model is not None:
        model.eval()
    prefix = decoder_prefix_ids(tokenizer, whisper.config)
    ids = special_ids(tokenizer)
    validation: dict = {}
    rows = mode_rows(params, test_manifest, "test", validation)
    generation = whisper.generation_config
    suppress = suppressed_token_ids(tokenizer, generation, ids["eot"])
    begin_suppress = list(getattr(generation, "begin_suppress_tokens", None) or [])
    max_new = int(params["evaluate"]["max_new_tokens"])
    compare_base = bool(params["evaluate"]["compare_base"]) or model is None

    def transcribe(hidden):
        tokens = greedy_decode(whisper, hidden, prefix, ids["eot"], max_new, suppress, begin_suppress)
        return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]

    total_frames = 2 * whisper.config.max_source_positions

    def batches(rows: list[dict]):
        """(dataset, its DataLoader) over rows, batches as collate_utterances makes them."""
        dataset = UtteranceDataset(rows, tokenizer, prefix, ids["eot"],
                                   whisper.config.max_target_positions)
        return dataset, DataLoader(
            dataset, batch_size=int(params["evaluate"]["batch_size"]), shuffle=False,
            num_workers=int(params["runtime"]["num_workers"]),
            collate_fn=functools.partial(collate_utterances, pad_token_id=ids["pad"],
                                         prefix_length=len(prefix)))

    # One expert (a single LoRA) gets weight 1 whatever the gate sees: without the base
    # decode, the frozen encoder's pass would only feed that gate.
    needs_base_encoder = compare_base or model.config.num_experts > 1

    def encode(batch: dict):
        """(log-mel features, frames per utterance, the frozen encoder's output or None when
        nothing needs it) of one batch."""
        features, frames = whisper_features(batch["audio"], batch["num_samples"], whisper.config,
                                            device, whisper.dtype)
        if not needs_base_encoder:
            return features, frames, None
        with torch.no_grad(), autocast(device, amp_dtype):
            return features, frames, whisper.model.encoder(features).last_hidden_state

    def predict(rows: list[dict], oracle_table: dict | None, label: str) -> tuple[list[dict], dict]:
        """(one prediction per usable row, skipped counts by reason) of base, MoE and, with a
        table, oracle routing. Each MoE prediction keeps its learned top-1 expert."""
        dataset, loader = batches(rows)
        predictions, skipped = [], dict(dataset.skipped)
        for batch in track(loader, label, unit="batch"):
            for reason in batch["errors"]:
                skipped[reason] = skipped.get(reason, 0) + 1
            if not batch["size"]:
                continue
            features, frames, base_hidden = encode(batch)
            with torch.no_grad(), autocast(device, amp_dtype):
                result = {"base": transcribe(base_hidden) if compare_base else None}
                if model is not None:
                    pooled = (pool_encoder_output(base_hidden, frames, total_frames)
                              if base_hidden is not None
                              else features.new_zeros(len(frames), whisper.config.d_model))
                    routed = model.route(pooled, model.config.routing_mode, model.config.top_k)
                    result["moe"] = decode_routed(model, features, routed["weights"], transcribe)
                    result["weights"] = routed["weights"].float().cpu().numpy()
                    result["probs"] = routed["probs"].float().cpu().numpy()
                    if oracle_table:
                        oracle = oracle_weights(batch["groups"], oracle_table,
                                                model.config.num_experts, device)
                        result["oracle"] = decode_routed(model, features, oracle, transcribe)
            for i, utterance_id in enumerate(batch["ids"]):
                row = dataset.rows[int(batch["index"][i])]
                prediction = {"id": utterance_id, "group": row.get("group", ""),
                              "speaker": row.get("speaker", ""), "reference": row["text"]}
                if row.get(SECOND_REFERENCE):
                    prediction["reference_with_disfluencies"] = row[SECOND_REFERENCE]
                for system in ("moe", "oracle", "base"):
                    if result.get(system) is not None:
                        prediction[system] = result[system][i]
                if model is not None:
                    prediction["expert_weights"] = [round(float(w), 4) for w in result["weights"][i]]
                    prediction["gate_probs"] = [round(float(p), 4) for p in result["probs"][i]]
                    learned_top1[utterance_id] = int(result["weights"][i].argmax())
                predictions.append(prediction)
        return predictions, skipped

    def add_oracle(rows: list[dict], predictions: list[dict], oracle_table: dict) -> None:
        """Decode every prediction's utterance with its group routed by `oracle_table` (in
        place): a pass after the learned routing has shown which expert each group prefers."""
        by_id = {prediction["id"]: prediction for prediction in predictions}
        for batch in track(batches(rows)[1], "evaluate oracle routing", unit="batch"):
            if not batch["size"]:
                continue
            features, _ = whisper_features(batch["audio"], batch["num_samples"], whisper.config,
                                           device, whisper.dtype)
            with torch.no_grad(), autocast(device, amp_dtype):
                oracle = oracle_weights(batch["groups"], oracle_table, model.config.num_experts, device)
                texts = decode_routed(model, features, oracle, transcribe)
            for utterance_id, text in zip(batch["ids"], texts, strict=True):
                by_id[utterance_id]["oracle"] = text

    learned_top1: dict[str, int] = {}  # utterance id -> the learned gate's first expert
    plan = oracle_plan(params["evaluate"]["oracle_routing"], model, rows)
    oracle_table = dict(model.config.group_to_expert) if plan == "checkpoint" else None
    predictions, skipped = predict(rows, oracle_table, label="evaluate")
    oracle_source = ORACLE_SOURCES.get(plan)
    if plan == "learned" and predictions:
        oracle_table = learned_majority_table(predictions, learned_top1, model.config.num_experts)
        add_oracle(rows, predictions, oracle_table)

    if not predictions:
        from whisper_moe.data.validate import DataQualityError

        raise DataQualityError(
            f"{test_manifest}: no utterance could be evaluated (skipped: {skipped}); "
            "run `whisper-moe validate-data` on it and fix the files it names"
        )
    whisper_normalize, whisper_normalizer_name = whisper_normalizer(spelling_mapping_of(tokenizer))
    scoring = scoring_mode(params["evaluate"]["scoring"], rows)
    metrics = summarise(predictions, model.config.num_experts if model else 0, whisper_normalize,
                        scoring)
    metrics["whisper_normalizer"] = whisper_normalizer_name
    if oracle_table:
        metrics["oracle_routing"] = {"source": oracle_source, "group_to_expert": oracle_table}
    metrics["extra_test_sets"] = score_extra_test_sets(params, predict, validation, whisper_normalize,
                                                       model.config.num_experts if model else 0,
                                                       out_dir)
    metrics["skipped"] = skipped
    metrics["input_validation"] = validation.get(str(test_manifest))  # None: the data stage's
    metrics["checkpoint"] = str(checkpoint_dir) if checkpoint_dir else None
    metrics["base_model"] = str(base_model or model.config.base_model)
    metrics["test_set"] = evaluated_set_identity(test_manifest, predictions)
    write_text_atomic(out_dir / artifacts.PREDICTIONS,
                      "".join(json.dumps(prediction) + "\n" for prediction in predictions))
    write_json_atomic(out_dir / artifacts.EVALUATION_METRICS, metrics)
    write_dvc_tables(metrics, out_dir)
    write_report(metrics, predictions, out_dir, train_dir or guess_train_dir(checkpoint_dir))
    headline = metrics.get("moe", metrics.get("base"))
    base = f" (base {metrics['base']['wer']:.4f})" if "moe" in metrics and "base" in metrics else ""
    log.info("test WER %.4f%s on %d utterances; report: %s", headline["wer"], base,
             len(predictions), out_dir / artifacts.EVALUATION_REPORT)
    if scoring == "sap":
        log.info("SAP scoring: CER %.4f (clipped per utterance, better of two references)",
                 headline["sap_cer"])
    return metrics


def evaluated_set_identity(test_manifest, predictions: list[dict]) -> dict:
    """What makes two evaluations comparable: the manifest's bytes and the utterances decoded.

    A regression gate compares WERs only when both hashes agree; the ids hash also
    catches quick mode's caps and skipped utterances on the same manifest.
    """
    ids = "\n".join(sorted(p["id"] for p in predictions)).encode()
    return {"manifest": Path(test_manifest).name, "manifest_sha256": sha256_of(test_manifest),
            "ids_sha256": hashlib.sha256(ids).hexdigest(), "utterances": len(predictions)}


ORACLE_SOURCES = {"checkpoint": "checkpoint", "learned": "test-set majority of the learned gate"}


def oracle_plan(setting: str, model, rows: list[dict]) -> str | None:
    """Where oracle routing's group -> expert table comes from: "checkpoint", "learned" or None.

    The checkpoint's table (the pretrained pipeline's majority cluster of each group) comes
    first. Without one, "auto" routes each group to the expert the learned gate picks most
    often for it on this test set (`learned_majority_table`): from gate outputs and group
    labels only (never the references), so "learned vs oracle" then says whether the gate's
    per-utterance choices beat one fixed expert per group.
    """
    if model is None or setting == "off":
        return None
    if model.config.group_to_expert:
        return "checkpoint"
    if setting == "checkpoint" or model.config.num_experts < 2:
        return None
    if len({row.get("group", "") for row in rows}) < 2:
        return None
    return "learned"


def learned_majority_table(predictions: list[dict], learned_top1: dict[str, int],
                           num_experts: int) -> dict[str, int]:
    """{group: the expert the learned gate sends most of its utterances to first}; ties go
    to the lower expert id."""
    counts: dict[str, list[int]] = {}
    for prediction in predictions:
        counts.setdefault(prediction["group"], [0] * num_experts)[learned_top1[prediction["id"]]] += 1
    return {group: int(np.argmax(row)) for group, row in sorted(counts.items())}


def score_extra_test_sets(params: dict, predict, validation: dict, whisper_normalize,
                          num_experts: int, out_dir: Path) -> dict:
    """{name: metrics} of each manifest in evaluate.extra_test_sets, decoded by the same
    systems (no oracle: its groups need not be the training groups), predictions written
    beside. A set with nothing usable is recorded with 0 utterances, not an error: it is
    secondary to the main test set."""
    results = {}
    for name, manifest in sorted(params["evaluate"]["extra_test_sets"].items()):
        rows = mode_rows(params, manifest, "test", validation)
        predictions, skipped = predict(rows, None, label=f"evaluate {name}")
        if not predictions:
            log.warning("extra test set %s (%s): no utterance could be evaluated (skipped: %s)",
                        name, manifest, skipped)
        results[name] = {
            **summarise(predictions, num_experts, whisper_normalize,
                        scoring_mode(params["evaluate"]["scoring"], rows)),
            "manifest": str(manifest), "skipped": skipped,
            "input_validation": validation.get(str(manifest)),
        }
        path = artifacts.extra_test_set_predictions(out_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "".join(json.dumps(p) + "\n" for p in predictions))
    return results


def error_rates(references: list[str], hypotheses: list[str],
                whisper_normalize=None) -> dict[str, float]:
    """WER and CER after our normalisation (see whisper_moe.text), and with
    `whisper_normalize` the WER under Whisper's normaliser beside them."""
    rates = {"wer": wer(references, hypotheses), "cer": cer(references, hypotheses)}
    if whisper_normalize is not None:
        rates["wer_whisper_norm"] = wer(references, hypotheses, whisper_normalize)
    return rates


def decode_routed(model, features, weights, transcribe) -> list[str]:
    """Encode and decode with every expert layer mixed by `weights`."""
    with model.routed(weights):
        hidden = model.base.model.encoder(features).last_hidden_state
        return transcribe(hidden)


def oracle_weights(groups, table: dict[str, int], num_experts: int, device) -> torch.Tensor:
    """One-hot routing by each utterance's group (unknown groups: uniform mixture)."""
    weights = torch.full((len(groups), num_experts), 1.0 / num_experts, device=device)
    for i, group in enumerate(groups):
        if group in table:
            weights[i] = 0
            weights[i, int(table[group])] = 1.0
    return weights


def scoring_mode(setting: str, rows: list[dict]) -> str:
    """The scoring to use, sap or standard: evaluate.scoring, auto deciding by the manifest."""
    if setting == "auto":
        return "sap" if rows and all(row.get(SECOND_REFERENCE) for row in rows) else "standard"
    if setting == "sap" and not any(row.get(SECOND_REFERENCE) for row in rows):
        log.warning("evaluate.scoring=sap but no test row has %r: SAP scoring uses the one "
                    "reference (`text`) of each utterance", SECOND_REFERENCE)
    return setting


def summarise(predictions: list[dict], num_experts: int, whisper_normalize=None,
              scoring: str = "standard") -> dict:
    """WER/CER per system overall and per group (with SAP scoring, the SAP challenge's CER
    and WER beside them); expert usage and gate entropy per group."""
    metrics: dict = {"utterances": len(predictions), "scoring": scoring,
                     "primary_metric": "sap_cer" if scoring == "sap" else "wer"}
    for system in ("moe", "oracle", "base"):
        if predictions and system in predictions[0]:
            refs = [p["reference"] for p in predictions]
            hyps = [p[system] for p in predictions]
            overall = error_rates(refs, hyps, whisper_normalize)
            per_group = {}
            for group in sorted({p["group"] for p in predictions}):
                chosen = [p for p in predictions if p["group"] == group]
                per_group[group] = {**error_rates([p["reference"] for p in chosen],
                                                  [p[system] for p in chosen], whisper_normalize),
                                    "n": len(chosen)}
                if scoring == "sap":
                    per_group[group].update(sap_scores(chosen, system))
            if scoring == "sap":
                overall.update(sap_scores(predictions, system, with_interval=True))
            metrics[system] = {**overall, "wer_ci95": wer_interval(predictions, system),
                               "per_group": per_group}
    if num_experts and predictions:
        metrics["routing"] = routing_summary(predictions, num_experts)
    return metrics


def reference_set(prediction: dict) -> list[str]:
    """The references an utterance may be scored against (SAP: with and without disfluencies)."""
    second = prediction.get("reference_with_disfluencies")
    return [prediction["reference"], second] if second else [prediction["reference"]]


def sap_scores(predictions: list[dict], system: str, with_interval: bool = False) -> dict:
    """The SAP challenge's CER (its primary metric) and WER: per utterance clipped at 100 % and
    against the better of the references, then summed over the corpus."""
    references = [reference_set(p) for p in predictions]
    hypotheses = [p[system] for p in predictions]
    scores = {}
    for unit, key in (("char", "sap_cer"), ("word", "sap_wer")):
        edits, lengths = clipped_min_reference_errors(references, hypotheses, unit)
        scores[key] = sum(edits) / sum(lengths) if sum(lengths) else 0.0
        if with_interval and key == "sap_cer":  # the bootstrap takes any edits / length rate
            scores["sap_cer_ci95"] = speaker_bootstrap_wer(
                np.array(edits, dtype=np.float64), np.array(lengths, dtype=np.float64),
                bootstrap_units(predictions))
    return scores


def bootstrap_units(predictions: list[dict]) -> list[str]:
    """Each utterance's speaker; an utterance without one is its own unit."""
    return [p.get("speaker") or f"utterance:{p['id']}" for p in predictions]


def wer_interval(predictions: list[dict], system: str) -> list[float]:
    """95 % speaker-bootstrap interval of a system's WER."""
    edits, words = utterance_word_errors([p["reference"] for p in predictions],
                                         [p[system] for p in predictions])
    return speaker_bootstrap_wer(edits, words, bootstrap_units(predictions))


def routing_summary(predictions: list[dict], num_experts: int) -> dict:
    """Gate entropy, top-1 agreement with the groups, and how the routing used each expert:
    `expert_share` counts top-1 choices, `dispatch` every slot an expert received under
    the checkpoint's routing (top-k slots, or every expert under soft routing), so an
    expert nobody picks first but many pick second is not idle."""
    weights = np.array([p["expert_weights"] for p in predictions])
    probs = np.array([p["gate_probs"] for p in predictions])
    entropy = -(probs * np.log(np.clip(probs, 1e-9, None))).sum(1)
    usage, top1 = {}, {}
    for group in sorted({p["group"] for p in predictions}):
        mask = np.array([p["group"] == group for p in predictions])
        usage[group] = weights[mask].mean(0).round(4).tolist()
        top1[group] = np.bincount(weights[mask].argmax(1), minlength=num_experts).tolist()
    groups = [p["group"] for p in predictions]
    agreement = (nmi_permutation_test(weights.argmax(1).tolist(), groups)
                 if len(set(groups)) > 1 else {})
    return {
        **{f"top1_group_{key}": value for key, value in agreement.items()},
        "gate_entropy_mean": float(entropy.mean()),
        "gate_entropy_max": float(np.log(num_experts)),
        "expert_share": np.bincount(weights.argmax(1), minlength=num_experts).tolist(),
        "dispatch": (weights > 0).sum(0).astype(int).tolist(),
        "idle_experts": np.flatnonzero((weights > 0).sum(0) == 0).tolist(),
        "expert_usage_per_group": usage,
        "top1_counts_per_group": top1,
    }


def nmi_sentence(routing: dict) -> str:
    """The report's words on routing-group agreement, when there are several groups."""
    if "top1_group_nmi" not in routing:
        return ""
    return (f"; NMI(top-1 expert, group) {routing['top1_group_nmi']:.3f} (95 % permutation level "
            f"{routing['top1_group_nmi_permutation_95']:.3f}, p = {routing['top1_group_nmi_p_value']:.3f})")


def write_dvc_tables(metrics: dict, out_dir: Path) -> None:
    """Flat files that `dvc plots` reads: WER per group per system, expert usage rows."""
    rows = []
    for system in ("base", "moe", "oracle"):
        for group, values in metrics.get(system, {}).get("per_group", {}).items():
            rows.append({"system": system, "group": group, "wer": round(values["wer"], 4)})
    write_json_atomic(out_dir / "wer_per_group.json", rows)
    usage_rows = []
    for group, usage in metrics.get("routing", {}).get("expert_usage_per_group", {}).items():
        for expert, weight in enumerate(usage):
            usage_rows.append({"group": group, "expert": expert, "weight": weight})
    write_json_atomic(out_dir / "expert_usage.json", usage_rows)


def guess_train_dir(checkpoint_dir) -> Path | None:
    if checkpoint_dir is None:
        return None
    parent = Path(checkpoint_dir).parent
    return parent if artifacts.has_train_log(parent) else None


def write_report(metrics: dict, predictions: list[dict], out_dir: Path, train_dir) -> Path:
    """A self-contained HTML report: numbers, plots embedded as data URIs, worst utterances."""
    figures = []
    per_group = {s: {g: v["wer"] for g, v in metrics[s]["per_group"].items()}
                 for s in ("base", "moe", "oracle") if s in metrics}
    if per_group:
        figures.append(("WER per group", plot_wer_per_group(per_group, out_dir / "wer_per_group.png")))
    if "routing" in metrics:
        figures.append(("Expert usage per group",
                        plot_expert_usage(metrics["routing"]["expert_usage_per_group"],
                                          out_dir / "expert_usage.png")))
    if train_dir is not None and artifacts.has_train_log(train_dir):
        history = artifacts.load_train_log(train_dir)
        figures.append(("Training curves", plot_training_curves(history, None)))
    summary_rows = "".join(
        f"<tr><td>{s}</td><td>{metrics[s]['wer']:.4f}</td>"
        f"<td>{metrics[s].get('wer_whisper_norm', float('nan')):.4f}</td><td>{metrics[s]['cer']:.4f}</td></tr>"
        for s in ("base", "moe", "oracle") if s in metrics)
    normaliser = html.escape(str(metrics.get("whisper_normalizer", "whisper")))
    sap_html = "".join(
        f"<p>{s}: SAP challenge CER {metrics[s]['sap_cer']:.4f} (clipped at 100 % per utterance, "
        f"better of the references with and without disfluencies), WER {metrics[s]['sap_wer']:.4f}</p>"
        for s in ("base", "moe", "oracle") if "sap_cer" in metrics.get(s, {}))
    group_rows = ""
    groups = sorted({g for s in per_group.values() for g in s})
    for group in groups:
        cells = "".join(f"<td>{per_group[s].get(group, float('nan')):.4f}</td>" for s in per_group)
        group_rows += f"<tr><td>{html.escape(group)}</td>{cells}</tr>"
    headline = "moe" if "moe" in metrics else "base"
    worst = sorted(predictions, key=lambda p: -error_rates([p["reference"]], [p[headline]])["wer"])[:15]
    worst_rows = "".join(
        f"<tr><td>{html.escape(p['id'])}</td><td>{html.escape(p['group'])}</td>"
        f"<td>{html.escape(p['reference'])}</td><td>{html.escape(p[headline])}</td></tr>" for p in worst)
    images = "".join(f"<h2>{html.escape(t)}</h2><img src='{png_data_uri(png)}'/>" for t, png in figures)
    extra_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{extra['utterances']}</td>"
        + "".join(f"<td>{extra[s]['wer']:.4f}</td>" if s in extra else "<td>-</td>" for s in ("base", "moe"))
        + "</tr>" for name, extra in metrics.get("extra_test_sets", {}).items())
    extra_html = (f"<h2>Extra test sets</h2><table><tr><th>set</th><th>utterances</th><th>base WER</th>"
                  f"<th>MoE WER</th></tr>{extra_rows}</table>") if extra_rows else ""
    routing = metrics.get("routing")
    routing_html = (f"<p>Gate entropy {routing['gate_entropy_mean']:.3f} "
                    f"(max {routing['gate_entropy_max']:.3f}); utterances per top expert "
                    f"{routing['expert_share']}{nmi_sentence(routing)}</p>") if routing else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>whisper-moe evaluation</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px}}img{{max-width:100%}}</style></head><body>
<h1>whisper-moe evaluation</h1><p>{metrics['utterances']} test utterances; base model
{html.escape(metrics['base_model'])}; checkpoint {html.escape(str(metrics['checkpoint']))}</p>
<table><tr><th>system</th><th>WER</th><th>WER ({normaliser} normaliser)</th><th>CER</th></tr>
{summary_rows}</table>{sap_html}{routing_html}
<h2>WER per group</h2><table><tr><th>group</th>{''.join(f'<th>{s}</th>' for s in per_group)}</tr>
{group_rows}</table>{extra_html}{images}
<h2>Highest-WER utterances ({headline})</h2><table><tr><th>id</th><th>group</th><th>reference</th>
<th>hypothesis</th></tr>{worst_rows}</table></body></html>"""
    path = out_dir / artifacts.EVALUATION_REPORT
    write_text_atomic(path, page)
    return path
