"""Compare finished runs: WER overall and per group, training time, trainable parameters.

Each run directory is a `whisper-moe pipeline` output folder or a `dvc repro` run
folder (`params.json` where the pipeline wrote one, `train/train_metrics.json`,
`evaluate/metrics.json`, and for the pretrained MoE the pretraining stage folders).
The frozen base model, decoded on the same test audio by every evaluation that ran with
`evaluate.compare_base` (one is enough), is its own row. Writes `comparison.md` and `comparison.json`.

Step budgets are compared with pretraining counted: a system's optimizer steps are its
joint training's plus its expert pretraining's (the gate's pretraining, a small MLP on
cached embeddings, does not step the ASR model and is left out).

Every WER comes with its 95 % speaker-bootstrap interval, and every pair of systems
evaluated on the same test utterances with the interval of their WER difference
(`whisper_moe.uncertainty`), read from each run's `evaluate/predictions.jsonl`.
Routing quality sits beside WER, because a mixture is only worth its name when its
routing follows something in the data: gate entropy, NMI between top-1 expert and group
with its permutation p-value, per-group dispatch, and learned minus oracle routing WER
with its paired interval. WER on the evaluations' extra test sets has its own table.

The fair baseline for an MoE of E experts of rank r is one LoRA with the same
trainable parameters, rank E*r, which is simply a regular MoE with one expert:

    whisper-moe pipeline --skip-pretraining --num-experts 1 -S model.lora.rank=64 \\
        --output-dir runs/single_lora        # rank 64 = 4 experts x rank 16

(its gate has a single output, so it routes everything to the one LoRA).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from whisper_moe import artifacts
from whisper_moe.artifacts import read_json
from whisper_moe.fsio import write_json_atomic, write_text_atomic
from whisper_moe.uncertainty import (
    speaker_bootstrap_difference,
    speaker_bootstrap_wer,
    utterance_word_errors,
)

log = logging.getLogger("whisper_moe.compare")

PRETRAINING_STAGES = ("embed", "cluster", "pretrain_gate", "pretrain_experts")
# The report each pretraining stage leaves, for runs made stage by stage (no markers).
PRETRAINING_REPORTS = {"embed": artifacts.EMBED_REPORT, "cluster": artifacts.CLUSTER_REPORT,
                       "pretrain_gate": artifacts.GATE_METRICS,
                       "pretrain_experts": artifacts.PRETRAIN_EXPERTS_METRICS}
TIME_KEYS = ("seconds", "train_time_s")  # embed records `seconds`, trainers `train_time_s`


def find_file(run_dir: Path, candidates: tuple[str, ...]) -> Path:
    for name in candidates:
        if (run_dir / name).exists():
            return run_dir / name
    raise FileNotFoundError(
        f"{run_dir}: none of {list(candidates)} exists; pass a `whisper-moe pipeline` output "
        "folder whose train and evaluate stages have finished"
    )


def system_name(num_experts: int, rank: int, pretrained: bool) -> str:
    if num_experts == 1:
        return f"single LoRA (rank {rank})"
    kind = "pretrained MoE" if pretrained else "regular MoE"
    return f"{kind} ({num_experts} experts, rank {rank})"


def pretraining_seconds(run_dir: Path) -> float | None:
    """Seconds the pretraining stages took: from the pipeline's stage markers, or, for a
    run made stage by stage (dvc repro writes no markers), from the stages' own reports."""
    markers = marker_seconds(run_dir)
    if markers is not None:
        return markers
    reports = report_seconds(run_dir)
    return sum(reports.values()) if reports else None


def marker_seconds(run_dir: Path) -> float | None:
    """Sum of the pipeline's stage markers (whole stages, model loading included)."""
    total, found = 0.0, False
    for stage in PRETRAINING_STAGES:
        marker = run_dir / stage / artifacts.STAGE_DONE
        if marker.exists():
            total += float(read_json(marker).get("seconds", 0.0))
            found = True
    return total if found else None


def report_seconds(run_dir: Path) -> dict[str, float]:
    """{stage: seconds} of the pretraining stages whose report records a time; stages
    that record none (the cluster and gate reports may not) are left out, not guessed."""
    times = {}
    for stage, name in PRETRAINING_REPORTS.items():
        path = run_dir / stage / name
        report = read_json(path) if path.exists() else {}
        value = next((report[key] for key in TIME_KEYS if report.get(key) is not None), None)
        if value is not None:
            times[stage] = float(value)
    return times


def pretraining_time_source(run_dir: Path) -> str | None:
    """Where the pretraining time came from, so a reader knows what it covers."""
    if marker_seconds(run_dir) is not None:
        return "stage markers"
    stages = report_seconds(run_dir)
    return f"stage reports ({', '.join(stages)})" if stages else None


def pretraining_steps(run_dir: Path) -> int | None:
    """Optimizer steps of expert pretraining, which trains the ASR model's LoRA experts
    (gate pretraining steps only the small gate MLP and is not counted)."""
    path = run_dir / "pretrain_experts" / artifacts.PRETRAIN_EXPERTS_METRICS
    steps = read_json(path).get("optimizer_steps") if path.exists() else None
    return None if steps is None else int(steps)


def total_steps(train: dict, pretraining: int | None) -> int | None:
    """Joint training's optimizer steps plus expert pretraining's, or None when unknown."""
    steps = train.get("optimizer_steps")
    return None if steps is None else int(steps) + (pretraining or 0)


def group_probe(run_dir: Path) -> dict | None:
    """The cluster report's linear probe of the gate input (None without one): how well any
    gate could tell the groups apart on speakers it never saw."""
    path = run_dir / "cluster" / artifacts.CLUSTER_REPORT
    return read_json(path).get("group_probe") if path.exists() else None


def checkpoint_rank(run_dir: Path) -> int | None:
    """LoRA rank from the trained checkpoint, for runs made stage by stage (dvc repro)."""
    config = run_dir / "train" / artifacts.MODEL_CHECKPOINT / "moe_config.json"
    return int(read_json(config)["rank"]) if config.exists() else None


def read_run(run_dir) -> tuple[dict, dict | None]:
    """(the run's system row, its base-model row or None)."""
    run_dir = Path(run_dir)
    metrics = read_json(find_file(run_dir, (f"evaluate/{artifacts.EVALUATION_METRICS}",
                                            artifacts.EVALUATION_METRICS)))
    train = read_json(find_file(run_dir, (f"train/{artifacts.TRAIN_METRICS}", artifacts.TRAIN_METRICS)))
    run_params = run_dir / artifacts.RUN_PARAMS
    params = read_json(run_params) if run_params.exists() else {}
    rank = int(params.get("model", {}).get("lora", {}).get("rank", 0)) or checkpoint_rank(run_dir)
    num_experts = int(train.get("num_experts", 0))
    pretrained = (run_dir / "pretrain_experts").is_dir()
    headline = metrics.get("moe")
    if headline is None:
        raise ValueError(f"{run_dir}: evaluate/metrics.json has no 'moe' results (a base-only evaluation?)")
    expert_pretraining_steps = pretraining_steps(run_dir)
    row = {
        "system": system_name(num_experts, rank, pretrained),
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "num_experts": num_experts,
        "lora_rank": rank,
        "pretrained": pretrained,
        "wer": headline["wer"],
        "wer_whisper_norm": headline.get("wer_whisper_norm"),
        "whisper_normalizer": metrics.get("whisper_normalizer"),
        "cer": headline["cer"],
        "sap_cer": headline.get("sap_cer"),
        "oracle_wer": metrics.get("oracle", {}).get("wer"),
        "per_group": {g: v["wer"] for g, v in headline.get("per_group", {}).items()},
        "test_utterances": metrics.get("utterances"),
        "train_time_s": train.get("train_time_s"),
        "pretraining_time_s": pretraining_seconds(run_dir),
        "pretraining_time_from": pretraining_time_source(run_dir),
        "optimizer_steps": total_steps(train, expert_pretraining_steps),
        "pretraining_steps": expert_pretraining_steps,
        "trainable_parameters": train.get("trainable_parameters"),
        "routing": routing_quality(metrics),
        "group_probe": group_probe(run_dir),
        "extra_test_sets": extra_test_set_wers(metrics, "moe"),
    }
    base = None
    if "base" in metrics:
        base = {
            "system": f"base ({metrics.get('base_model', 'frozen Whisper')})",
            "run": run_dir.name, "run_dir": str(run_dir), "num_experts": 0, "lora_rank": None,
            "pretrained": False, "wer": metrics["base"]["wer"], "cer": metrics["base"]["cer"],
            "wer_whisper_norm": metrics["base"].get("wer_whisper_norm"),
            "whisper_normalizer": metrics.get("whisper_normalizer"), "oracle_wer": None,
            "sap_cer": metrics["base"].get("sap_cer"),
            "per_group": {g: v["wer"] for g, v in metrics["base"].get("per_group", {}).items()},
            "test_utterances": metrics.get("utterances"), "train_time_s": None,
            "pretraining_time_s": None, "pretraining_time_from": None, "optimizer_steps": None,
            "pretraining_steps": None, "trainable_parameters": 0, "routing": None, "group_probe": None,
            "extra_test_sets": extra_test_set_wers(metrics, "base"),
        }
    return row, base


def routing_quality(metrics: dict) -> dict | None:
    """What an evaluation says about the gate: entropy, agreement with groups (NMI and its
    permutation test), top-1 dispatch overall and per group, and how oracle routing was made.
    None for a single expert, which has nothing to route."""
    routing = metrics.get("routing")
    if not routing or len(routing.get("expert_share", [])) < 2:
        return None
    return {
        "gate_entropy_mean": routing.get("gate_entropy_mean"),
        "gate_entropy_max": routing.get("gate_entropy_max"),
        "nmi": routing.get("top1_group_nmi"),
        "nmi_permutation_95": routing.get("top1_group_nmi_permutation_95"),
        "nmi_p_value": routing.get("top1_group_nmi_p_value"),
        "expert_share": routing.get("expert_share"),
        "dispatch": routing.get("dispatch"),  # every routed slot (top-k), not only first choices
        "dispatch_per_group": routing.get("top1_counts_per_group", {}),
        "oracle_source": (metrics.get("oracle_routing") or {}).get("source"),
    }


def extra_test_set_wers(metrics: dict, system: str) -> dict[str, float]:
    """{set name: WER} of one system on each extra test set the evaluation scored."""
    return {name: values[system]["wer"] for name, values in metrics.get("extra_test_sets", {}).items()
            if system in values}


def read_errors(run_dir) -> dict[str, dict]:
    """Per-utterance word errors of each system in a run's predictions ({} without them):
    {system: {"ids", "edits", "words", "units"}}, units being speakers."""
    run_dir = Path(run_dir)
    path = next((p for p in (run_dir / "evaluate" / artifacts.PREDICTIONS, run_dir / artifacts.PREDICTIONS)
                 if p.exists()), None)
    if path is None:
        return {}
    predictions = artifacts.read_jsonl(path)
    errors = {}
    for system in ("moe", "base", "oracle"):
        if predictions and all(system in p for p in predictions):
            edits, words = utterance_word_errors([p["reference"] for p in predictions],
                                                 [p[system] for p in predictions])
            errors[system] = {"ids": [p["id"] for p in predictions], "edits": edits, "words": words,
                              "units": [p.get("speaker") or f"utterance:{p['id']}" for p in predictions]}
    return errors


def aligned(first: dict, second: dict) -> tuple[dict, dict] | None:
    """Both systems' errors in the same utterance order, or None for different test sets."""
    if sorted(first["ids"]) != sorted(second["ids"]) or len(set(first["ids"])) != len(first["ids"]):
        return None
    order = {utterance: i for i, utterance in enumerate(second["ids"])}
    index = np.array([order[utterance] for utterance in first["ids"]])
    return first, {**second, "edits": second["edits"][index], "words": second["words"][index]}


def difference_rows(rows: list[dict], errors: list[dict | None]) -> list[dict]:
    """WER(a) - WER(b) with its paired speaker-bootstrap interval, for every pair of
    systems evaluated on the same test utterances."""
    result = []
    for i, (row_a, errors_a) in enumerate(zip(rows, errors)):
        for row_b, errors_b in list(zip(rows, errors))[i + 1:]:
            pair = aligned(errors_a, errors_b) if errors_a and errors_b else None
            if pair is None:
                continue
            a, b = pair
            words = a["words"].sum()
            result.append({
                "a": row_a["system"], "a_run": row_a["run"], "b": row_b["system"], "b_run": row_b["run"],
                "wer_difference": float((a["edits"].sum() - b["edits"].sum()) / words) if words else None,
                "ci95": speaker_bootstrap_difference(a["edits"], b["edits"], a["words"], a["units"]),
                "utterances": len(a["ids"]), "speakers": len(set(a["units"])),
            })
    return result


def oracle_differences(rows: list[dict], run_errors: list[dict]) -> None:
    """Each MoE row's `learned_minus_oracle` WER with its paired speaker-bootstrap interval,
    where its evaluation decoded oracle routing too (negative: the gate beats fixed routing)."""
    for row, errors in zip(rows, run_errors, strict=True):
        if not row.get("routing") or "oracle" not in errors or "moe" not in errors:
            continue
        learned, oracle = errors["moe"], errors["oracle"]
        words = learned["words"].sum()
        row["routing"]["learned_minus_oracle"] = (
            float((learned["edits"].sum() - oracle["edits"].sum()) / words) if words else None)
        row["routing"]["learned_minus_oracle_ci95"] = speaker_bootstrap_difference(
            learned["edits"], oracle["edits"], learned["words"], learned["units"])


def routing_markdown(rows: list[dict], groups: list[str]) -> list[str]:
    """Routing quality of every MoE row beside its WER, its per-group dispatch, and what a
    linear probe says the gate input can tell apart."""
    routed = [row for row in rows if row.get("routing")]
    probes = probe_lines(rows)
    if not routed and not probes:
        return []
    return ["", "## Routing"] + (routing_table(routed, groups) if routed else []) + probes


def probe_lines(rows: list[dict]) -> list[str]:
    """One line per run whose cluster report probed the gate input for the groups."""
    lines = []
    for row in rows:
        probe = row.get("group_probe")
        if not probe:
            continue
        per_group = ", ".join(f"{g} {v:.3f}" for g, v in sorted(probe.get("per_group", {}).items()))
        lines += ["", f"Gate input: a linear probe tells the groups apart on held-out speakers with "
                  f"accuracy {probe['accuracy']:.3f} (chance {probe['chance']:.3f}; per group: "
                  f"{per_group}); {row['system']}, run {row['run']}, {probe.get('utterances')} "
                  f"training utterances in {probe.get('held_out_speaker_folds')} speaker folds."]
    return lines


def routing_table(routed: list[dict], groups: list[str]) -> list[str]:
    """The gate-quality table and the per-group dispatch table of the routed rows."""
    lines = ["",
             "| system | run | WER % | gate entropy (uniform) | NMI(top-1 expert, group) | "
             "95 % permutation level | p | top-1 utterances per expert | routed slots per expert | "
             "learned - oracle WER (points) | 95 % interval | oracle routing |", "|" + "---|" * 12]
    for row in routed:
        r = row["routing"]
        entropy = ("-" if r["gate_entropy_mean"] is None
                   else f"{r['gate_entropy_mean']:.3f} ({r['gate_entropy_max']:.3f})")
        nmi = [("-" if r[key] is None else f"{r[key]:.3f}")
               for key in ("nmi", "nmi_permutation_95", "nmi_p_value")]
        gap = r.get("learned_minus_oracle")
        lines.append(" | ".join([f"| {row['system']}", row["run"], _cell(row["wer"]), entropy, *nmi,
                                 str(r["expert_share"]), str(r.get("dispatch") or "-"),
                                 "-" if gap is None else f"{100 * gap:+.2f}",
                                 _interval_cell(r.get("learned_minus_oracle_ci95")),
                                 r["oracle_source"] or "-"]) + " |")
    lines += ["", "Utterances each group sends to each expert first (top-1 dispatch, experts in order):", "",
              "| system | run | " + " | ".join(groups) + " |", "|" + "---|" * (len(groups) + 2)]
    for row in routed:
        dispatch = row["routing"]["dispatch_per_group"]
        cells = [str(dispatch[g]) if g in dispatch else "-" for g in groups]
        lines.append(f"| {row['system']} | {row['run']} | " + " | ".join(cells) + " |")
    lines += ["", "Oracle routing sends every utterance of a group to one expert: the checkpoint's "
              "group table, or else the expert the learned gate picks most often for that group on "
              "the test set. An interval of learned - oracle that contains 0 means these speakers "
              "cannot tell the gate's per-utterance choices from fixed per-group routing."]
    return lines


def extra_sets_markdown(rows: list[dict]) -> list[str]:
    """WER of every system on each extra test set (forgetting shows as a rise over base)."""
    names = sorted({name for row in rows for name in row.get("extra_test_sets") or {}})
    if not names:
        return []
    lines = ["", "## Extra test sets (WER %)", "", "| system | run | " + " | ".join(names) + " |",
             "|" + "---|" * (len(names) + 2)]
    for row in rows:
        sets = row.get("extra_test_sets") or {}
        lines.append(f"| {row['system']} | {row['run']} | "
                     + " | ".join(_cell(sets.get(name)) for name in names) + " |")
    return lines


def step_notes(rows: list[dict]) -> list[str]:
    """What the optimizer-step column counts, and which systems had larger step budgets."""
    counted = [row for row in rows if row.get("optimizer_steps") is not None]
    if not counted:
        return []
    notes = ["Optimizer steps: joint training plus expert pretraining (pretrain_experts), the "
             "steps that update the ASR model; gate pretraining (pretrain_gate) trains only the small "
             "gate MLP on cached embeddings and is not counted."]
    if len({row["optimizer_steps"] for row in counted}) > 1:
        budgets = "; ".join(f"{row['system']} ({row['run']}) {row['optimizer_steps']}"
                            + (f" ({row['optimizer_steps'] - row['pretraining_steps']} training + "
                               f"{row['pretraining_steps']} expert pretraining)"
                               if row.get("pretraining_steps") else "")
                            for row in counted)
        notes.append(f"The systems trained with different numbers of optimizer steps: {budgets}.")
    return notes


def pretraining_time_notes(rows: list[dict]) -> list[str]:
    """Say when a pretraining time is the sum of the stages' own reports (no markers),
    which time training loops rather than whole stages."""
    prefix = "stage reports ("
    sources = [f"run {row['run']}: {row['pretraining_time_from'].removeprefix(prefix)[:-1]}"
               for row in rows if str(row.get("pretraining_time_from")).startswith(prefix)]
    if not sources:
        return []
    return ["Pretraining time without the pipeline's stage markers (as under dvc repro) sums the times "
            f"the stages record in their own reports ({'; '.join(sources)}); stages whose report "
            "records no time, and model loading around the training loops, are not included."]


def wer_interval(errors: dict | None) -> list[float] | None:
    if not errors:
        return None
    return speaker_bootstrap_wer(errors["edits"], errors["words"], errors["units"])


def single_lora_hint(rows: list[dict]) -> str | None:
    """The command for the equal-parameter single LoRA when the runs lack one."""
    moe = [r for r in rows if r["num_experts"] > 1 and r["lora_rank"]]
    if not moe or any(r["num_experts"] == 1 for r in rows):
        return None
    largest = max(moe, key=lambda r: r["num_experts"] * r["lora_rank"])
    rank = largest["num_experts"] * largest["lora_rank"]
    return (f"No single-LoRA baseline among these runs. For the same trainable LoRA parameters as "
            f"{largest['system']}, run: `whisper-moe pipeline --skip-pretraining --num-experts 1 "
            f"-S model.lora.rank={rank} --output-dir runs/single_lora`")


def _cell(value, kind: str = "wer") -> str:
    if value is None:
        return "-"
    if kind == "wer":
        return f"{100 * value:.2f}"
    if kind == "time":
        return f"{value / 60:.1f} min" if value >= 60 else f"{value:.1f} s"
    if kind == "count":
        return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value:,}"
    return str(value)


def _interval_cell(interval: list[float] | None) -> str:
    if not interval or any(v != v for v in interval):  # missing, or NaN
        return "-"
    return f"[{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"


def differences_markdown(differences: list[dict]) -> list[str]:
    """The table of WER differences between systems, with their intervals."""
    if not differences:
        return []
    lines = ["", "## WER differences (a - b, points) with 95 % speaker-bootstrap intervals", "",
             "| a | b | difference | 95 % interval | speakers |", "|---|---|---|---|---|"]
    for d in differences:
        value = "-" if d["wer_difference"] is None else f"{100 * d['wer_difference']:+.2f}"
        lines.append(f"| {d['a']} ({d['a_run']}) | {d['b']} ({d['b_run']}) | {value} | "
                     f"{_interval_cell(d['ci95'])} | {d['speakers']} |")
    lines.append("")
    lines.append("An interval that contains 0 means these test speakers cannot rank the two systems.")
    return lines


def markdown(rows: list[dict], groups: list[str], notes: list[str],
             differences: list[dict] | None = None) -> str:
    sap = any(row.get("sap_cer") is not None for row in rows)
    header = (["system", "run", "WER %", "WER 95 % CI", "WER % (Whisper norm.)", "CER %"]
              + (["SAP CER %"] if sap else []) + ["oracle WER %"]
              + [f"WER % {g}" for g in groups]
              + ["training time", "pretraining time", "optimizer steps", "trainable parameters"])
    lines = ["# whisper-moe comparison", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["system"], row["run"], _cell(row["wer"]), _interval_cell(row.get("wer_ci95")),
                 _cell(row.get("wer_whisper_norm")), _cell(row["cer"])]
        cells += [_cell(row.get("sap_cer"))] if sap else []
        cells += [_cell(row["oracle_wer"])]
        cells += [_cell(row["per_group"].get(g)) for g in groups]
        cells += [_cell(row["train_time_s"], "time"), _cell(row["pretraining_time_s"], "time"),
                  _cell(row.get("optimizer_steps"), "count"), _cell(row["trainable_parameters"], "count")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += differences_markdown(differences or [])
    lines += routing_markdown(rows, groups)
    lines += extra_sets_markdown(rows)
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def run(params: dict, run_dirs, out_dir) -> dict:
    """Read every run's metrics and write comparison.md + comparison.json into out_dir."""
    if not run_dirs:
        raise ValueError("compare needs at least one run directory")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, bases, errors, all_errors = [], [], {}, []
    for run_dir in run_dirs:
        row, base = read_run(run_dir)
        run_errors = read_errors(run_dir)
        all_errors.append(run_errors)
        rows.append(row)
        errors[id(row)] = run_errors.get("moe")
        if base is not None:
            bases.append(base)
            errors[id(base)] = run_errors.get("base")
    notes = [("WER after the project's normalisation (lower-case, punctuation stripped); "
              "trainable parameters are experts plus gate.")]
    normalisers = sorted({str(r["whisper_normalizer"]) for r in rows + bases if r.get("whisper_normalizer")})
    if normalisers:
        notes.append("WER (Whisper norm.): Whisper's normaliser from transformers "
                     f"({', '.join(normalisers)}; whisper_english needs the tokenizer's normalizer.json, "
                     "whisper_basic is used without it).")
    distinct_bases: dict = {}
    for base in bases:  # every run decodes the base; one row per base model and test set
        distinct_bases.setdefault((base["system"], base["test_utterances"]), base)
    oracle_differences(rows, all_errors)
    rows = list(distinct_bases.values()) + rows
    row_errors = [errors[id(row)] for row in rows]
    for row, row_error in zip(rows, row_errors):
        row["wer_ci95"] = wer_interval(row_error)
    differences = difference_rows(rows, row_errors)
    if any(e is not None for e in row_errors):
        notes.append("Intervals: 95 % bootstrap over test speakers (whole speakers resampled, "
                     "differences paired on the same speakers).")
    if any(e is None for e in row_errors):
        notes.append("Runs without evaluate/predictions.jsonl have no intervals.")
    if len({r["test_utterances"] for r in rows}) > 1:
        notes.append("The runs were evaluated on different numbers of test utterances: "
                     "compare WERs with care.")
    notes += step_notes(rows) + pretraining_time_notes(rows)
    hint = single_lora_hint(rows)
    if hint:
        notes.append(hint)
    groups = sorted({g for r in rows for g in r["per_group"]})
    write_text_atomic(out_dir / "comparison.md", markdown(rows, groups, notes, differences))
    result = {"systems": rows, "differences": differences, "groups": groups, "notes": notes}
    write_json_atomic(out_dir / "comparison.json", result)
    log.info("compared %d runs: %s", len(run_dirs), out_dir / "comparison.md")
    return {"markdown": str(out_dir / "comparison.md"), "json": str(out_dir / "comparison.json"),
            "systems": len(rows)}
