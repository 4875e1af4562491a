"""Gate a retrained model against the accepted model of its pipeline (whisper_moe.regression).

    python scripts/check_regression.py --new metrics.json --pipeline pretrained \\
        [--accepted-dir metrics/accepted] [--max-wer-increase 0.01] [--max-cer-increase 0.01] \\
        [--max-group-wer-increase 0.03] [--max-wer-over-base 0.0] [--accept]

The baseline is <accepted-dir>/<pipeline>.json. Exit status: 0 accepted, 1 regression,
2 refused (unreadable metrics, another pipeline's metrics, or a different test set).
With no baseline yet the new model is judged against its base model only; --accept
then writes the new metrics as the pipeline's baseline, for the pull request to record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from whisper_moe import regression

EXIT_CODES = {regression.ACCEPTED: 0, regression.REGRESSION: 1, regression.REFUSED: 2}


def read_metrics(path: Path) -> dict:
    """The JSON object in path; ValueError naming the file when it is not one."""
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=Path, required=True, help="metrics of the retrained model")
    parser.add_argument("--pipeline", required=True, help="pretrained or regular: picks the baseline")
    parser.add_argument("--accepted-dir", type=Path, default=Path("metrics/accepted"),
                        help="folder of the accepted metrics, one <pipeline>.json each")
    defaults = regression.Margins()
    parser.add_argument("--max-wer-increase", type=float, default=defaults.wer)
    parser.add_argument("--max-cer-increase", type=float, default=defaults.cer)
    parser.add_argument("--max-group-wer-increase", type=float, default=defaults.group_wer)
    parser.add_argument("--max-wer-over-base", type=float, default=defaults.over_base_wer)
    parser.add_argument("--accept", action="store_true",
                        help="on acceptance, write the new metrics as the pipeline's baseline")
    args = parser.parse_args(argv)

    baseline_path = regression.accepted_path(args.accepted_dir, args.pipeline)
    try:
        new = read_metrics(args.new)
        accepted = read_metrics(baseline_path) if baseline_path.exists() else None
    except (OSError, ValueError) as error:
        print(f"REFUSED: {error}", file=sys.stderr)
        return EXIT_CODES[regression.REFUSED]
    margins = regression.Margins(wer=args.max_wer_increase, cer=args.max_cer_increase,
                                 group_wer=args.max_group_wer_increase,
                                 over_base_wer=args.max_wer_over_base)
    verdict = regression.judge(new, accepted, args.pipeline, margins)
    print(f"pipeline {args.pipeline}: baseline {baseline_path}"
          f"{'' if accepted is not None else ' (none yet)'}")
    print(regression.format_verdict(verdict))
    if verdict.status == regression.ACCEPTED and args.accept:
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        baseline_path.write_text(json.dumps({**new, "pipeline": args.pipeline}, indent=2) + "\n")
        print(f"wrote {baseline_path}")
    return EXIT_CODES[verdict.status]


if __name__ == "__main__":
    sys.exit(main())
