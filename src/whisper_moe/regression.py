"""The regression gate: may a retrained model replace the accepted one of its pipeline?

Each pipeline has one accepted baseline (the evaluation metrics of the model it last
accepted). A new model passes when, on the *same* test set, its overall WER and CER rose
by no more than a margin, no group's WER rose by more than a (wider) margin, and it is
no worse than the base model it was fine-tuned from. Comparing figures measured on
different test sets says nothing, so that is refused rather than judged.

Metrics files are what the evaluate stage writes (`metrics.json`) or what
`whisper-moe kfp run --metrics-out` fetches from a published run: {"moe": {"wer", "cer",
"per_group": {group: {"wer", "cer", "n"}}}, "base": {...}, "test_set": {"manifest_sha256",
"ids_sha256", "utterances"}, "pipeline": ...}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

ACCEPTED, REGRESSION, REFUSED = "accepted", "regression", "refused"
TEST_SET_KEYS = ("manifest_sha256", "ids_sha256")


@dataclass(frozen=True)
class Margins:
    """Largest accepted rises, absolute (0.01 is one WER point)."""

    wer: float = 0.01
    cer: float = 0.01
    group_wer: float = 0.03
    over_base_wer: float = 0.0  # how much worse than the base model the new model may be


@dataclass(frozen=True)
class Check:
    """One comparison: name, reference figure, new figure, largest accepted new figure."""

    name: str
    reference: float | None
    new: float | None
    limit: float | None

    @property
    def passed(self) -> bool:
        return self.limit is None or (self.new is not None and self.new <= self.limit + 1e-12)


@dataclass
class Verdict:
    status: str
    reason: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]


def accepted_path(accepted_dir: str | Path, pipeline: str) -> Path:
    """The one baseline file of a pipeline: <accepted_dir>/<pipeline>.json."""
    return Path(accepted_dir) / f"{pipeline}.json"


def judge(new: dict, accepted: dict | None, pipeline: str, margins: Margins = Margins()) -> Verdict:
    """Compare new metrics with the pipeline's accepted ones (None: there is none yet)."""
    problem = unusable(new, "new metrics", pipeline)
    if problem:
        return Verdict(REFUSED, problem)
    checks = [base_check(new, margins)]
    if accepted is None:
        return conclude(checks, "no accepted model yet: judged against the base model only")
    problem = unusable(accepted, "accepted metrics", pipeline) or different_test_sets(new, accepted)
    if problem:
        return Verdict(REFUSED, problem)
    for metric, margin in (("wer", margins.wer), ("cer", margins.cer)):
        old = accepted["moe"][metric]
        checks.append(Check(f"moe.{metric}", old, new["moe"].get(metric), old + margin))
    new_groups = new["moe"].get("per_group", {})
    for group, old in sorted(accepted["moe"].get("per_group", {}).items()):
        checks.append(Check(f"moe.per_group.{group}.wer", old["wer"],
                            new_groups.get(group, {}).get("wer"), old["wer"] + margins.group_wer))
    return conclude(checks, "compared with the accepted model on the same test set")


def conclude(checks: list[Check], context: str) -> Verdict:
    failed = [check.name for check in checks if not check.passed]
    if failed:
        return Verdict(REGRESSION, f"{context}; over the limit: {', '.join(failed)}", checks)
    return Verdict(ACCEPTED, context, checks)


def base_check(new: dict, margins: Margins) -> Check:
    """The fine-tuned model against the frozen base it started from, on the same audio."""
    base = new["base"]["wer"]
    return Check("moe.wer vs base.wer", base, new["moe"]["wer"], base + margins.over_base_wer)


def unusable(metrics: dict, label: str, pipeline: str) -> str:
    """Why a metrics dict cannot be judged ('' when it can)."""
    for system in ("moe", "base"):
        figures = metrics.get(system)
        if not isinstance(figures, dict) or not all(is_number(figures.get(k)) for k in ("wer", "cer")):
            hint = (" (set evaluate.compare_base: true so the evaluation decodes the base model too)"
                    if system == "base" else "")
            return f"{label}: no {system}.wer and {system}.cer{hint}"
    if not all(metrics.get("test_set", {}).get(key) for key in TEST_SET_KEYS):
        return (f"{label}: no test_set.manifest_sha256/ids_sha256, so the test set it was measured on "
                "is unknown; re-evaluate it with this version of `whisper-moe evaluate`")
    recorded = metrics.get("pipeline")
    if recorded and recorded != pipeline:
        return f"{label}: measured for pipeline {recorded!r}, not {pipeline!r}; each pipeline has its own baseline"
    return ""


def different_test_sets(new: dict, accepted: dict) -> str:
    """Why the two evaluations are not comparable ('' when they used the same test set)."""
    for key in TEST_SET_KEYS:
        if new["test_set"][key] != accepted["test_set"][key]:
            return (f"different test sets: test_set.{key} is {new['test_set'][key][:12]}... in the new "
                    f"metrics but {accepted['test_set'][key][:12]}... in the accepted ones "
                    f"({accepted['test_set'].get('utterances')} vs {new['test_set'].get('utterances')} "
                    "utterances); evaluate both models on one test manifest, or accept the new test set "
                    "by replacing the baseline in a reviewed pull request")
    return ""


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_verdict(verdict: Verdict) -> str:
    """A plain-text table and the verdict line, readable in a CI log and a pull request."""
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = []
    if verdict.checks:
        width = max(len("check"), *(len(check.name) for check in verdict.checks))
        lines += [f"{'check':<{width}}  {'reference':>9}  {'new':>9}  {'limit':>9}  result",
                  "-" * (width + 42)]
        for check in verdict.checks:
            lines.append(f"{check.name:<{width}}  {cell(check.reference):>9}  {cell(check.new):>9}  "
                         f"{cell(check.limit):>9}  {'ok' if check.passed else 'FAIL'}")
        lines.append("")
    lines.append(f"{verdict.status.upper()}: {verdict.reason}")
    return "\n".join(lines)
