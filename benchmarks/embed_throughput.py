"""Embedding extraction throughput, end to end: decode audio, log-mel, encoder, pooling.

Measures, in the same run and on the same audio:
  ours  - the embed stage's path (`whisper_moe.embedding.pooled_embedding_batches`):
          batches, audio decoded in DataLoader workers, log-mel on the device, bf16 weights
          on a GPU, only the pooled [d] vector leaves the device;
  seed  - the research pipeline's way: one utterance at a time, fp32, features on the CPU
          with transformers' WhisperFeatureExtractor, the full [1500, d] hidden states kept.
and prints utterances/s of each and the ratio.

  python benchmarks/embed_throughput.py                      # CPU, small: demo tiny.en
  python benchmarks/embed_throughput.py --base-model tiny-random
  python benchmarks/embed_throughput.py --config large-v2    # CUDA: random large-v2, bf16
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from whisper_moe.data.audio import load_audio
from whisper_moe.data.manifest import read_manifest
from whisper_moe.embedding import embedding_dtype, pooled_embedding_batches

CONFIGS = {
    "small": {"device": "cpu", "precision": "fp32", "utterances": 24, "seed_utterances": 24,
              "batch_size": 8, "num_workers": 0},
    "large-v2": {"device": "cuda", "precision": "mixed", "utterances": 512, "seed_utterances": 32,
                 "batch_size": 32, "num_workers": 8},
}


def demo_rows(corpus: str | None, count: int) -> list[dict]:
    """`count` manifest rows of demo speech (cycled), synthesised when no corpus is given."""
    if corpus is None:
        from whisper_moe.data.demo import make_demo_corpus

        corpus = tempfile.mkdtemp(prefix="embed-bench-")
        make_demo_corpus(corpus, accents=["en-us", "en-gb-scotland", "en-029"],
                         speakers_per_accent=2, utterances_per_speaker=3, seed=0)
    rows = []
    for split in ("train", "dev", "test"):
        path = Path(corpus) / f"{split}.jsonl"
        if path.exists():
            rows += read_manifest(path)
    if not rows:
        sys.exit(f"{corpus}: no train/dev/test.jsonl manifests")
    return [rows[i % len(rows)] for i in range(count)]


def large_v2_whisper(device: torch.device):
    """Random weights, the large-v2 shapes (32+32 layers, d 1280, 80 mel bins)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=51865, num_mel_bins=80, d_model=1280, encoder_layers=32, decoder_layers=32,
        encoder_attention_heads=20, decoder_attention_heads=20, encoder_ffn_dim=5120,
        decoder_ffn_dim=5120, max_source_positions=1500, max_target_positions=448,
    )
    with torch.device(device):
        model = WhisperForConditionalGeneration(config)
    return model.eval()


def small_whisper(name: str):
    from whisper_moe.model.base import load_base_model, tiny_random_whisper

    if name == "tiny-random":
        return tiny_random_whisper(seed=0)[0]
    return load_base_model(name)[0]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(whisper, rows, device, batch_size, num_workers) -> tuple[float, np.ndarray]:
    """utterances/s of the embed stage's batched path."""
    synchronize(device)
    started = time.perf_counter()
    outputs = [b["embeddings"] for b in pooled_embedding_batches(whisper, rows, device, batch_size,
                                                                  num_workers)]
    synchronize(device)
    return len(rows) / (time.perf_counter() - started), np.concatenate(outputs)


def seed_way(whisper, rows, device) -> float:
    """utterances/s one at a time: CPU features, fp32 encoder, full hidden states kept."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=whisper.config.num_mel_bins)
    synchronize(device)
    started = time.perf_counter()
    kept = []
    for row in rows:
        audio = load_audio(row["audio_filepath"])
        features = extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            hidden = whisper.model.encoder(features.to(device)).last_hidden_state
        kept.append(hidden[0].cpu())  # the seed kept the whole [1500, d] tensor per utterance
    torch.stack([h.mean(0) for h in kept])  # what it then used
    synchronize(device)
    return len(rows) / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--base-model", default="demo",
                        help="small config: 'demo' (tiny.en), 'tiny-random', or a model directory")
    parser.add_argument("--corpus", help="folder with train/dev/test.jsonl (default: synthesise demo speech)")
    parser.add_argument("--utterances", type=int)
    parser.add_argument("--seed-utterances", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds (best counts)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    config = dict(CONFIGS[args.config])
    for key in ("utterances", "seed_utterances", "batch_size", "num_workers"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    device = torch.device(config["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--config large-v2 needs a CUDA GPU")

    rows = demo_rows(args.corpus, config["utterances"])
    seed_rows = rows[: config["seed_utterances"]]
    seed_model = large_v2_whisper(device) if args.config == "large-v2" else small_whisper(args.base_model)
    seed_model.to(device, torch.float32)
    our_model = seed_model
    dtype = embedding_dtype(device, config["precision"])
    if dtype != torch.float32:
        our_model = copy.deepcopy(seed_model).to(dtype)
    # warm-up, then alternate the two ways so a busy machine slows both alike; best round counts
    seed_way(seed_model, seed_rows[:1], device)
    ours(our_model, rows[: config["batch_size"]], device, config["batch_size"], 0)
    seed_rates, our_rates = [], []
    for _ in range(args.repeats):
        seed_rates.append(seed_way(seed_model, seed_rows, device))
        rate, embeddings = ours(our_model, rows, device, config["batch_size"], config["num_workers"])
        our_rates.append(rate)
    seed_rate, our_rate = max(seed_rates), max(our_rates)
    whisper = our_model
    result = {
        "config": args.config,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": "random large-v2" if args.config == "large-v2" else args.base_model,
        "d_model": whisper.config.d_model,
        "dtype_ours": str(dtype).replace("torch.", ""),
        "batch_size": config["batch_size"],
        "num_workers": config["num_workers"],
        "utterances_ours": len(rows),
        "utterances_seed": min(len(rows), config["seed_utterances"]),
        "ours_utterances_per_s": round(our_rate, 2),
        "seed_utterances_per_s": round(seed_rate, 2),
        "ratio": round(our_rate / seed_rate, 2),
        "rounds": args.repeats,
        "ours_rounds": [round(r, 2) for r in our_rates],
        "seed_rounds": [round(r, 2) for r in seed_rates],
        "embeddings_shape": list(embeddings.shape),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(f"ours: {our_rate:.2f} utterances/s   seed's way: {seed_rate:.2f} utterances/s   "
          f"ratio {our_rate / seed_rate:.2f}x")
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
