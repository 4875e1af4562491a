"""How should the regular MoE break the symmetry between its experts? Train and compare.

The regular MoE trains gate and experts jointly from scratch: every expert's LoRA starts
with A random and B zero, so at the start all experts compute the same (nothing) and only
the gate's random init, the router noise and the load balance can make them differ. This
script trains the regular MoE (4 experts) on the demo corpus once per routing variant and
seed, evaluates each on the test split, and writes one table of WER and routing quality:

    nice -n 10 .venv/bin/python benchmarks/routing_symmetry.py --work /tmp/routing_symmetry
    python benchmarks/routing_symmetry.py --variants topk2-from-start --seeds 42,43
    python benchmarks/routing_symmetry.py --quick          # smoke run (mode quick), minutes
    python benchmarks/routing_symmetry.py --work W --variants a,b --seeds 42,43 --report-only
                                                # tabulate the finished runs in W, train nothing

The variants differ in when routing turns sparse (a soft curriculum or top-k from the first
step), in k, in the load-balance weight and in the gate's learning rate (`train.gate_lr`):
the demo trains 16 optimizer steps, in which a gate at the experts' 0.001 barely leaves
uniform.

Steps (all through the `whisper-moe` CLI, parameters from the repository's params.yaml,
the demo configuration, plus each variant's `-S` overrides):
  1. `whisper-moe data` builds the demo corpus once into WORK/data;
  2. per variant and seed, `whisper-moe train --num-experts 4` into WORK/<variant>/seed-<N>/train
     and `whisper-moe evaluate` (no base-model decode, no oracle routing) into .../evaluate.
     A finished step (its metrics file exists) is not run again, so a rerun with the same
     --work only adds what is missing; an interrupted training resumes (--resume);
  3. reads evaluate/metrics.json, train/train_metrics.json and the predictions, from which
     the 95 % speaker-bootstrap interval of the WER and of each variant's WER difference
     from the first variant (same seed, paired) come (`whisper_moe.uncertainty`, as
     `whisper-moe compare` computes them);
  4. writes benchmarks/results/routing_symmetry.md and .json (with the machine and date)
     and prints the table.

A variant passes when (all four): its gate is not near uniform (mean entropy below
NEAR_UNIFORM of the uniform maximum ln E), its top-1 expert agrees with the speaker group
more than chance (NMI above the 95 % level of shuffled groups), no expert is idle (top-1
choice of no test utterance), and its WER is not worse than the first variant's beyond
noise (the paired interval of the difference reaches 0 or lies below it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
NUM_EXPERTS = 4
# Gate entropy at or above this share of ln E counts as "near uniform": at 4 experts, 0.9 ln 4
# is about the entropy of [0.5, 1/6, 1/6, 1/6], a gate whose favourite gets half the weight.
NEAR_UNIFORM = 0.9

# name -> -S overrides on top of params.yaml (the demo: top-2, 1 soft epoch of 2 under
# curriculum, load balance 0.01, router noise 0.1). Every variant names its routing mode, the
# gate's learning rate and the balance bias, so the table keeps its meaning whatever
# params.yaml's defaults.
VARIANTS: dict[str, list[str]] = {
    "curriculum-top2": ["routing.mode=curriculum", "train.gate_lr=0.001", "routing.balance_bias_rate=0"],
    "topk2-from-start": ["routing.mode=topk", "train.gate_lr=0.001", "routing.balance_bias_rate=0"],
    "topk1-from-start": ["routing.mode=topk", "routing.top_k=1", "train.gate_lr=0.001",
                         "routing.balance_bias_rate=0"],
    "topk2-lb0.05": ["routing.mode=topk", "routing.load_balance_weight=0.05", "train.gate_lr=0.001",
                     "routing.balance_bias_rate=0"],
    "topk2-gate-lr0.003": ["routing.mode=topk", "train.gate_lr=0.003", "routing.balance_bias_rate=0"],
    "topk2-gate-lr0.01": ["routing.mode=topk", "train.gate_lr=0.01", "routing.balance_bias_rate=0"],
    "topk1-gate-lr0.01": ["routing.mode=topk", "routing.top_k=1", "train.gate_lr=0.01",
                          "routing.balance_bias_rate=0"],
    "topk2-gate-lr0.01-lb0.05": ["routing.mode=topk", "train.gate_lr=0.01",
                                 "routing.load_balance_weight=0.05", "routing.balance_bias_rate=0"],
    "topk2-gate-lr0.01-lb0.1": ["routing.mode=topk", "train.gate_lr=0.01",
                                "routing.load_balance_weight=0.1", "routing.balance_bias_rate=0"],
    "topk2-gate-lr0.01-noise0.5": ["routing.mode=topk", "train.gate_lr=0.01", "routing.noise_std=0.5",
                                   "routing.balance_bias_rate=0"],
    "topk2-gate-lr0.01-bias0.1": ["routing.mode=topk", "train.gate_lr=0.01", "routing.balance_bias_rate=0.1"],
    "topk2-gate-lr0.003-lb0.1": ["routing.mode=topk", "train.gate_lr=0.003",
                                 "routing.load_balance_weight=0.1", "routing.balance_bias_rate=0"],
    "topk2-gate-lr0.01-lb0.1-z0.1": ["routing.mode=topk", "train.gate_lr=0.01",
                                     "routing.load_balance_weight=0.1", "routing.z_loss_weight=0.1",
                                     "routing.balance_bias_rate=0"],
}


# ------------------------------------------------------------------ running the CLI
def cli() -> list[str]:
    """The whisper-moe command of the Python running this script (its venv)."""
    script = Path(sys.executable).with_name("whisper-moe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "whisper_moe.cli"]


def run(command: list[str], log_file: Path) -> float:
    """Run one CLI command (its output to `log_file`), stop with its log tail on failure;
    returns its wall seconds."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + " ".join(command), flush=True)
    start = time.monotonic()
    with open(log_file, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if code:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"command failed (exit {code}), log {log_file}:\n{tail}")
    return time.monotonic() - start


def common_args(params: Path, quick: bool) -> list[str]:
    return ["--params", str(params)] + (["-S", "mode=quick"] if quick else [])


def build_data(work: Path, params: Path, quick: bool) -> Path:
    data = work / "data"
    if all((data / f"{split}.jsonl").exists() for split in ("train", "dev", "test")):
        print(f"data: {data} exists, reused", flush=True)
        return data
    run(cli() + ["data", "--out", str(data), "-S", f"data.dir={data / 'corpus'}"]
        + common_args(params, quick), work / "logs" / "data.log")
    return data


def run_dir(work: Path, variant: str, seed: int) -> Path:
    return work / variant / f"seed-{seed}"


def train_and_evaluate(work: Path, data: Path, variant: str, seed: int, params: Path,
                       quick: bool) -> Path:
    out = run_dir(work, variant, seed)
    overrides = [arg for setting in VARIANTS[variant] for arg in ("-S", setting)]
    train, evaluate = out / "train", out / "evaluate"
    if not (train / "train_metrics.json").exists():
        resume = ["--resume"] if (train / "checkpoints").exists() else []
        run(cli() + ["train", "--train-manifest", str(data / "train.jsonl"),
                     "--dev-manifest", str(data / "dev.jsonl"), "--out", str(train),
                     "--num-experts", str(NUM_EXPERTS), "--seed", str(seed)]
            + resume + overrides + common_args(params, quick), out / "train.log")
    else:
        print(f"{variant} seed {seed}: training done, reused", flush=True)
    if not (evaluate / "metrics.json").exists():
        run(cli() + ["evaluate", "--checkpoint", str(train / "checkpoint"),
                     "--manifest", str(data / "test.jsonl"), "--out", str(evaluate),
                     "--seed", str(seed), "-S", "evaluate.compare_base=false",
                     "-S", "evaluate.oracle_routing=off"]
            + common_args(params, quick), out / "evaluate.log")
    return out


# ------------------------------------------------------------------ reading the results
def wer_intervals(out: Path, reference: Path | None) -> tuple[list[float] | None, dict | None]:
    """(95 % speaker-bootstrap interval of the MoE WER, WER minus the reference run's with
    its paired interval), from the predictions, the way `whisper-moe compare` does it."""
    from whisper_moe.stages.compare import aligned, read_errors, wer_interval
    from whisper_moe.uncertainty import speaker_bootstrap_difference

    errors = read_errors(out).get("moe")
    interval = wer_interval(errors)
    if errors is None or reference is None or reference == out:
        return interval, None
    other = read_errors(reference).get("moe")
    pair = aligned(errors, other) if other else None
    if pair is None:
        return interval, None
    a, b = pair
    words = a["words"].sum()
    return interval, {"wer_minus_reference": float((a["edits"].sum() - b["edits"].sum()) / words),
                      "ci95": speaker_bootstrap_difference(a["edits"], b["edits"], a["words"], a["units"])}


def mean_top1_probability(out: Path) -> float | None:
    """Mean over test utterances of the gate's largest probability (None without predictions)."""
    from whisper_moe import artifacts

    path = out / "evaluate" / artifacts.PREDICTIONS
    rows = [row for row in artifacts.read_jsonl(path) if row.get("gate_probs")] if path.exists() else []
    return sum(max(row["gate_probs"]) for row in rows) / len(rows) if rows else None


def resumed(out: Path) -> bool:
    """Whether the training that finished was a --resume (its train_time_s adds the time
    before the stop that the checkpoint recorded; work after that checkpoint was redone)."""
    log = out / "train.log"
    return log.exists() and "resumed from" in log.read_text()


def row_from_metrics(variant: str, seed: int, settings: list[str], metrics: dict, train: dict,
                     wer_ci95: list[float] | None = None, difference: dict | None = None,
                     reference: str | None = None, top1_probability: float | None = None,
                     was_resumed: bool = False) -> dict:
    """One table row from an evaluation's metrics.json and a training's train_metrics.json."""
    routing = metrics.get("routing", {})
    share = [int(n) for n in routing.get("expert_share", [])]
    entropy, uniform = routing.get("gate_entropy_mean"), routing.get("gate_entropy_max")
    row = {
        "variant": variant,
        "seed": seed,
        "settings": settings,
        "wer": metrics["moe"]["wer"],
        "wer_ci95": wer_ci95 if wer_ci95 is not None else metrics["moe"].get("wer_ci95"),
        "reference": reference,
        "wer_minus_reference": difference["wer_minus_reference"] if difference else None,
        "wer_minus_reference_ci95": difference["ci95"] if difference else None,
        "gate_entropy_mean": entropy,
        "gate_entropy_max": uniform,
        "gate_entropy_ratio": entropy / uniform if entropy is not None and uniform else None,
        "gate_top1_probability_mean": top1_probability,
        "top1_group_nmi": routing.get("top1_group_nmi"),
        "top1_group_nmi_permutation_95": routing.get("top1_group_nmi_permutation_95"),
        "top1_group_nmi_p_value": routing.get("top1_group_nmi_p_value"),
        "expert_share": share,
        "idle_experts": idle_experts(share),
        "top1_counts_per_group": routing.get("top1_counts_per_group", {}),
        "utterances": metrics.get("utterances"),
        "train_time_s": train.get("train_time_s"),
        "train_resumed": was_resumed,
    }
    row["checks"] = checks(row)
    return row


def idle_experts(expert_share: list[int]) -> int:
    """Experts that are no test utterance's top-1 choice."""
    return sum(1 for count in expert_share if count == 0)


FAILURES = {"not_near_uniform": "near-uniform gate", "nmi_above_chance": "NMI at chance level",
            "no_idle_expert": "idle expert", "wer_not_worse": "WER worse"}


def checks(row: dict) -> dict[str, bool | None]:
    """The four criteria (None where the metrics lack what one needs)."""
    ratio, nmi, level = row["gate_entropy_ratio"], row["top1_group_nmi"], row["top1_group_nmi_permutation_95"]
    difference = row["wer_minus_reference_ci95"]
    return {
        "not_near_uniform": None if ratio is None else ratio < NEAR_UNIFORM,
        "nmi_above_chance": None if nmi is None or level is None else nmi > level,
        "no_idle_expert": row["idle_experts"] == 0 if row["expert_share"] else None,
        # the first variant is the reference: it cannot be worse than itself
        "wer_not_worse": True if row["reference"] in (None, row["variant"]) else
                         (None if difference is None else difference[0] <= 0),
    }


def finished(out: Path) -> bool:
    """Whether a variant's run was trained and evaluated."""
    return (out / "evaluate" / "metrics.json").exists() and (out / "train" / "train_metrics.json").exists()


def collect(work: Path, variants: list[str], seeds: list[int]) -> list[dict]:
    from whisper_moe.artifacts import read_json

    rows = []
    for seed in seeds:
        reference_dir = run_dir(work, variants[0], seed)
        if not finished(reference_dir):
            reference_dir = None
        for variant in variants:
            out = run_dir(work, variant, seed)
            if not finished(out):
                print(f"{variant} seed {seed}: not run in {work}, left out", flush=True)
                continue
            interval, difference = wer_intervals(out, reference_dir)
            rows.append(row_from_metrics(variant, seed, VARIANTS.get(variant, []),
                                         read_json(out / "evaluate" / "metrics.json"),
                                         read_json(out / "train" / "train_metrics.json"),
                                         interval, difference, variants[0], mean_top1_probability(out),
                                         resumed(out)))
    return rows


# ------------------------------------------------------------------ the table
def percent(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def interval_cell(interval: list[float] | None) -> str:
    return "-" if not interval else f"[{percent(interval[0])}, {percent(interval[1])}]"


def duration(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def table_cells(row: dict) -> list[str]:
    """The markdown cells of one row."""
    settings = " ".join(row["settings"]) or "params.yaml"
    if row["reference"] in (None, row["variant"]):
        difference = "reference"
    elif row["wer_minus_reference"] is None:
        difference = "-"
    else:
        difference = (f"{100 * row['wer_minus_reference']:+.2f} "
                      f"{interval_cell(row['wer_minus_reference_ci95'])}")
    entropy = ("-" if row["gate_entropy_mean"] is None else
               f"{row['gate_entropy_mean']:.3f} / {row['gate_entropy_max']:.3f} "
               f"({100 * row['gate_entropy_ratio']:.0f} %)"
               + ("" if row.get("gate_top1_probability_mean") is None else
                  f", top-1 p {row['gate_top1_probability_mean']:.2f}"))
    nmi = ("-" if row["top1_group_nmi"] is None else
           f"{row['top1_group_nmi']:.3f} / {row['top1_group_nmi_permutation_95']:.3f} / "
           f"{row['top1_group_nmi_p_value']:.3f}")
    verdict = criteria_cell(row["checks"])
    return [row["variant"], str(row["seed"]), f"`{settings}`",
            f"{percent(row['wer'])} {interval_cell(row['wer_ci95'])}", difference, entropy, nmi,
            str(row["expert_share"]), str(row["idle_experts"]),
            duration(row["train_time_s"]) + (" (resumed)" if row.get("train_resumed") else ""),
            verdict]


def criteria_cell(checks: dict[str, bool | None]) -> str:
    """"all met", or what failed (and "?" for criteria that could not be checked)."""
    if all(ok is True for ok in checks.values()):
        return "all met"
    return ", ".join(FAILURES[name] if ok is False else f"{FAILURES[name]}?"
                     for name, ok in checks.items() if ok is not True)


HEADER = ["variant", "seed", "settings (-S)", "WER % [95 % speaker bootstrap]",
          "WER − reference, pp [95 % paired]", "gate entropy / uniform", "NMI / perm. 95 % / p",
          "top-1 utterances per expert", "idle experts", "training time", "criteria"]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def dispatch_table(rows: list[dict]) -> str:
    """Top-1 utterances per expert within each group, one line per run."""
    groups = sorted({group for row in rows for group in row["top1_counts_per_group"]})
    lines = ["| variant | seed | " + " | ".join(groups) + " |", "|" + "---|" * (len(groups) + 2)]
    for row in rows:
        counts = row["top1_counts_per_group"]
        lines.append(f"| {row['variant']} | {row['seed']} | "
                     + " | ".join(str(counts.get(group, "-")) for group in groups) + " |")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


def report(rows: list[dict], meta: dict) -> str:
    return (f"# Breaking the symmetry between the regular MoE's experts\n\n"
            f"{meta['date']}, {meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs, "
            f"mode {meta['mode']}; {rows[0]['utterances'] if rows else '-'} test utterances; "
            f"{NUM_EXPERTS} experts, parameters from params.yaml plus each variant's settings.\n\n"
            f"Command: `{meta['command']}`\n\n"
            + (f"{meta['note']}\n\n" if meta.get("note") else "")
            + markdown_table(rows)
            + f"\n- Reference of the WER difference: {meta['variants'][0]}, same seed, on the "
              "same test utterances (paired speaker bootstrap).\n"
              f"- Gate entropy: mean over test utterances, of the uniform maximum ln {NUM_EXPERTS}; "
              f"near uniform at {100 * NEAR_UNIFORM:.0f} % or more (at 4 experts, about the entropy of "
              "[0.5, 1/6, 1/6, 1/6]); top-1 p: the gate's largest probability, mean over test "
              "utterances.\n"
              "- NMI between the top-1 expert and the speaker group, its 95 % level under shuffled "
              "groups, and the permutation p-value.\n"
              "- Idle experts: the top-1 choice of no test utterance.\n"
              "- Training time: wall time of the train stage (`train_time_s`); on a machine shared "
              "with other jobs it varies with their load, so compare it with care. A training stopped "
              "(SIGTERM) and resumed counts the time before the stop up to its last checkpoint.\n"
              "- Criteria: not near uniform, NMI above its permutation level, no idle expert, WER "
              "not worse than the reference beyond noise.\n\n"
              "## Top-1 utterances per expert, by group\n\n" + dispatch_table(rows))


# ------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder (default: a new temporary folder under /tmp)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}; the first is the WER reference")
    parser.add_argument("--seeds", default="42", help="comma-separated training seeds")
    parser.add_argument("--quick", action="store_true", help="mode quick (a smoke run)")
    parser.add_argument("--note", default="",
                        help="a paragraph for the report: how the runs were made, what to read into them")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: tabulate the finished runs in --work (variants and "
                             "seeds not run there are left out)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="folder for routing_symmetry.md and .json")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="routing_symmetry_", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)
    if os.nice(0) == 0:
        print("note: not running under nice; training uses every core it gets", flush=True)
    if not args.report_only:
        data = build_data(work, args.params, args.quick)
        for seed in args.seeds:
            for variant in args.variants:
                train_and_evaluate(work, data, variant, seed, args.params, args.quick)
    rows = collect(work, args.variants, args.seeds)
    meta = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(), "mode": "quick" if args.quick else "full",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "work": str(work), "variants": args.variants, "seeds": args.seeds,
            "num_experts": NUM_EXPERTS, "near_uniform": NEAR_UNIFORM,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "note": args.note}
    args.results.mkdir(parents=True, exist_ok=True)
    stem = "routing_symmetry_quick" if args.quick else "routing_symmetry"
    text = report(rows, meta)
    (args.results / f"{stem}.md").write_text(text)
    (args.results / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    print(text)
    print(f"written: {args.results / stem}.md and .json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
