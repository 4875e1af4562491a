"""Gate a retrained model on its test WER: fail when it is worse than the accepted one.

    python scripts/check_regression.py --new metrics.json --baseline metrics/accepted.json \\
        --max-wer-increase 0.01

Exit status: 0 accepted, 1 regression (test WER rose by more than --max-wer-increase, an
absolute difference: 0.01 is one WER point), 2 unusable input. A missing baseline file is
accepted with a notice: the first retrained model becomes the baseline through the pull
request that records it, which a person reviews.

Both files are JSON. The test WER is found at --key (dotted path) or, by default, at the
first of these that exists: moe.wer (evaluate stage's metrics.json), test_wer, test.wer,
wer. Every WER/CER figure present in either file is printed as a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

DEFAULT_WER_KEYS = ("moe.wer", "test_wer", "test.wer", "wer")
EXIT_ACCEPTED, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2


def load_metrics(path: Path) -> dict:
    """The JSON object in path; ValueError/TypeError naming the file when it is not one."""
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON ({error}); pass the file written by --metrics-out"
        ) from None
    if not isinstance(metrics, dict):
        raise TypeError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}")
    return metrics


def flatten_numbers(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf as {"moe.per_group.en-us.wer": 0.12, ...} (booleans are not numbers)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_numbers(value, f"{path}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[path] = float(value)
    return flat


def find_test_wer(flat: dict[str, float], key: str | None) -> tuple[str, float]:
    """(key, value) of the test WER; KeyError listing what was looked for."""
    candidates = (key,) if key else DEFAULT_WER_KEYS
    for candidate in candidates:
        if candidate in flat and math.isfinite(flat[candidate]):
            return candidate, flat[candidate]
    raise KeyError(f"no finite test WER at {', '.join(candidates)}")


Row = tuple[str, float | None, float | None]


def error_rate_rows(new: dict[str, float], baseline: dict[str, float]) -> list[Row]:
    """(metric, baseline, new) for every WER/CER figure in either file, sorted by name."""
    names = sorted(
        name
        for name in set(new) | set(baseline)
        if name.rsplit(".", 1)[-1].lower().endswith(("wer", "cer"))
    )
    return [(name, baseline.get(name), new.get(name)) for name in names]


def format_table(rows: list[Row], wer_key: str) -> str:
    """Plain-text table that reads the same in a CI log and in a terminal."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    width = max([len("metric")] + [len(name) for name, _, _ in rows])
    lines = [f"{'metric':<{width}}  {'baseline':>9}  {'new':>9}  {'change':>9}", "-" * (width + 33)]
    for name, old, new in rows:
        change = "-" if old is None or new is None else f"{new - old:+.4f}"
        marker = "  <- gate" if name == wer_key else ""
        lines.append(f"{name:<{width}}  {cell(old):>9}  {cell(new):>9}  {change:>9}{marker}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=Path, required=True, help="metrics of the retrained model")
    parser.add_argument(
        "--baseline", type=Path, required=True, help="metrics of the accepted model"
    )
    parser.add_argument(
        "--max-wer-increase",
        type=float,
        default=0.01,
        help="largest accepted rise of test WER, absolute (default 0.01)",
    )
    parser.add_argument("--key", help="dotted path of the test WER in both files (default: auto)")
    args = parser.parse_args(argv)

    try:
        new_flat = flatten_numbers(load_metrics(args.new))
        wer_key, new_wer = find_test_wer(new_flat, args.key)
    except (OSError, ValueError, TypeError, KeyError) as error:
        print(f"error: {args.new}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    if not args.baseline.exists():
        print(format_table(error_rate_rows(new_flat, {}), wer_key))
        print(f"\nno baseline at {args.baseline}: accepting test WER {new_wer:.4f} as the first")
        return EXIT_ACCEPTED
    try:
        baseline_flat = flatten_numbers(load_metrics(args.baseline))
        _, baseline_wer = find_test_wer(baseline_flat, wer_key)
    except (OSError, ValueError, TypeError, KeyError) as error:
        print(f"error: {args.baseline}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    print(format_table(error_rate_rows(new_flat, baseline_flat), wer_key))
    increase = new_wer - baseline_wer
    verdict = (
        f"test WER {baseline_wer:.4f} -> {new_wer:.4f} ({increase:+.4f}, "
        f"allowed +{args.max_wer_increase:.4f})"
    )
    if increase > args.max_wer_increase + 1e-12:
        print(f"\nREGRESSION: {verdict}")
        return EXIT_REGRESSION
    print(f"\naccepted: {verdict}")
    return EXIT_ACCEPTED


if __name__ == "__main__":
    sys.exit(main())
