"""Routed transcription on CTranslate2 (export-ct2) against our PyTorch decoder, same files.

Measures, in one run, on the same audio and the same threads:
  torch-top1  - our model and greedy decoder, each utterance sent to its gate's top expert
                alone (what the CT2 export computes);
  torch       - our model with the checkpoint's own routing (e.g. top-2 mixing), for context;
  ct2         - `whisper-moe export-ct2` models: base encoder -> gate -> expert model.
Methods are interleaved over `--repeats` passes; speed is utterances/s (median and range),
WER is over the manifest (our normalisation). The export itself is timed too.

  python benchmarks/ct2_vs_torch.py --checkpoint dvc_runs/regular/train/checkpoint \
      --manifest dvc_runs/data/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from whisper_moe.config import defaults
from whisper_moe.data.manifest import read_manifest
from whisper_moe.metrics import wer
from whisper_moe.model.ct2_export import export_ct2
from whisper_moe.stages.transcribe import ct2_decoder, read_windows, torch_decoder


def transcribe_all(decode, windows: list, batch_size: int) -> tuple[list[str], float]:
    """(texts, seconds) for every utterance, in batches."""
    started = time.perf_counter()
    texts: list[str] = []
    for start in range(0, len(windows), batch_size):
        texts.extend(text for text, _ in decode(windows[start : start + batch_size]))
    return texts, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="whisper-moe checkpoint folder")
    parser.add_argument("--manifest", required=True, help="JSONL manifest (e.g. the test split)")
    parser.add_argument("--export", help="existing export-ct2 folder (default: export now)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    params = defaults()
    params["runtime"]["device"] = "cpu"
    params["evaluate"]["max_new_tokens"] = args.max_new_tokens

    export_seconds = None
    export_dir = args.export
    if export_dir is None:
        export_dir = tempfile.mkdtemp(prefix="ct2-bench-") + "/export"
        started = time.perf_counter()
        export_ct2(args.checkpoint, export_dir)
        export_seconds = time.perf_counter() - started

    rows = read_manifest(args.manifest)
    windows = []
    for row in rows:
        pieces, _ = read_windows(row["audio_filepath"])
        if len(pieces) != 1:
            raise SystemExit(f"{row['id']}: over 30 s; this benchmark compares single windows")
        windows.append(pieces[0])
    references = [row["text"] for row in rows]

    decoders = {
        "torch-top1": torch_decoder(params, args.checkpoint, routing="top1"),
        "torch": torch_decoder(params, args.checkpoint),
        "ct2": ct2_decoder(params, export_dir),
    }
    for decode in decoders.values():  # warm-up: first-call allocations out of the timing
        decode(windows[:1])
    seconds = {name: [] for name in decoders}
    texts = {}
    for _ in range(args.repeats):
        for name, decode in decoders.items():
            texts[name], elapsed = transcribe_all(decode, windows, args.batch_size)
            seconds[name].append(elapsed)

    results = {"utterances": len(rows), "threads": args.threads, "batch_size": args.batch_size,
               "repeats": args.repeats, "export_seconds": export_seconds, "methods": {}}
    for name in decoders:
        rates = [len(rows) / s for s in seconds[name]]
        results["methods"][name] = {
            "wer": wer(references, texts[name]),
            "utt_per_s_median": statistics.median(rates),
            "utt_per_s_min": min(rates), "utt_per_s_max": max(rates),
        }
    methods = results["methods"]
    results["ct2_speedup_vs_torch_top1"] = (methods["ct2"]["utt_per_s_median"]
                                            / methods["torch-top1"]["utt_per_s_median"])
    results["wer_difference_points"] = 100 * (methods["ct2"]["wer"] - methods["torch-top1"]["wer"])
    results["identical_transcripts"] = sum(a == b for a, b in zip(texts["ct2"], texts["torch-top1"]))

    print(f"{len(rows)} utterances, {args.threads} threads, batch {args.batch_size}, "
          f"{args.repeats} interleaved passes")
    if export_seconds is not None:
        print(f"export-ct2: {export_seconds:.1f} s")
    for name, numbers in methods.items():
        print(f"{name:>11}: WER {numbers['wer']:.4f}  {numbers['utt_per_s_median']:.2f} utt/s "
              f"(range {numbers['utt_per_s_min']:.2f}-{numbers['utt_per_s_max']:.2f})")
    print(f"ct2 vs torch-top1: {results['ct2_speedup_vs_torch_top1']:.2f}x speed, WER "
          f"{results['wer_difference_points']:+.2f} points, identical transcripts "
          f"{results['identical_transcripts']}/{len(rows)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
