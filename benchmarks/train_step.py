"""One joint-training step, timed after warm-up: ours vs the seed's way vs single-LoRA PEFT.

    python benchmarks/train_step.py                       # CPU, small config
    python benchmarks/train_step.py --config large-v2     # CUDA, random large-v2, bf16

All are measured in the same run on the same random inputs:
  ours            stacked experts (one pass of rank E*r), gate on cached pooled embeddings
  seed            PEFT adapters switched per expert: one full forward per expert, the
                  per-expert logits mixed by the gate, plus a second encoder pass for the gate
  single-lora     a plain PEFT LoRA of rank r on the same modules (the speed to match)
  single-lora-Er  a plain PEFT LoRA of rank E*r: the same LoRA parameters as the E experts,
                  the fair baseline for quality and the fair one for speed too
Every method is built and warmed up first; then the timing rounds interleave them (the
order rotates each round), so that a machine's slow minute (other processes, clock
changes, thermal limits) falls on all methods alike rather than on whichever ran then.
Each step is timed on its own; a method's figure is the median step with its spread
(the 25th-75th percentile and the extremes). Prints utterances/s, memory and the ratios
of medians; `--json FILE` also writes them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch.nn import functional as F

CONFIGS = {
    # d_model 384, 4+4 layers: Whisper tiny's shape, random weights
    "small": dict(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                  decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, num_mel_bins=80),
    "large-v2": dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                     decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
                     num_mel_bins=80),
}


def random_whisper(name: str, device, dtype):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=51865, max_source_positions=1500, max_target_positions=448,
                           **CONFIGS[name])
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(config).to(device=device, dtype=dtype)


def inputs(batch: int, tokens: int, device, dtype):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(batch, 80, 3000, generator=generator).to(device, dtype)
    ids = torch.randint(0, 50000, (batch, tokens), generator=generator).to(device)
    return features, ids


def ours_step(args, device, dtype):
    from whisper_moe.model.moe import MoEConfig, WhisperMoE

    model = WhisperMoE(random_whisper(args.config, device, dtype),
                       MoEConfig(base_model="random", num_experts=args.experts, rank=args.rank,
                                 alpha=2 * args.rank, dropout=0.05)).to(device)
    for layer in [layer for _, layer in model.expert_layers()]:
        layer.lora_A.data = layer.lora_A.data.float()
        layer.lora_B.data = layer.lora_B.data.float()
    if args.compile:
        model.base.model.encoder = torch.compile(model.base.model.encoder)
        model.base.model.decoder = torch.compile(model.base.model.decoder)
    params = [p for group in model.trainable_parameters().values() for p in group]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    features, ids = inputs(args.batch_size, args.tokens, device, dtype)
    pooled = torch.randn(args.batch_size, model.base.config.d_model, device=device)

    def step():
        with autocast(device, args):
            out = model(features, ids, ids, pooled, mode=args.routing, top_k=2,
                        load_balance_weight=0.2)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, count(params)


def count(params) -> int:
    return sum(p.numel() for p in params)


def peft_model(args, device, dtype, adapters: int, rank: int | None = None):
    from peft import LoraConfig, get_peft_model

    base = random_whisper(args.config, device, dtype)
    rank = rank or args.rank
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                        target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, config, adapter_name="expert0")
    for expert in range(1, adapters):
        model.add_adapter(f"expert{expert}", config)
    return model, base


def seed_step(args, device, dtype):
    """The seed's soft routing: every expert is a full model pass, and the gate needs
    its own pass of the frozen encoder."""
    model, base = peft_model(args, device, dtype, args.experts)
    gate_encoder = random_whisper(args.config, device, dtype).model.encoder.eval()
    gate = torch.nn.Sequential(torch.nn.Linear(base.config.d_model, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, args.experts)).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(gate.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    features, ids = inputs(args.batch_size, args.tokens, device, dtype)

    def step():
        with autocast(device, args):
            with torch.no_grad():
                pooled = gate_encoder(features).last_hidden_state.mean(1)
            probs = F.softmax(gate(pooled.float()), -1)
            mixed = 0
            for expert in range(args.experts):
                model.set_adapter(f"expert{expert}")
                logits = model(input_features=features, decoder_input_ids=ids).logits
                mixed = mixed + probs[:, expert, None, None] * F.softmax(logits.float(), -1)
            loss = F.nll_loss(mixed.clamp_min(1e-9).log().reshape(-1, mixed.shape[-1]), ids.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # PEFT trains only the active adapter; the experts' parameters all count toward the budget
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    return step, lora + count(gate.parameters())


def single_lora_step(args, device, dtype, rank: int | None = None):
    model, _ = peft_model(args, device, dtype, 1, rank)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    features, ids = inputs(args.batch_size, args.tokens, device, dtype)

    def step():
        with autocast(device, args):
            logits = model(input_features=features, decoder_input_ids=ids).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, count(params)


def single_lora_same_parameters_step(args, device, dtype):
    """One LoRA of rank E*r: as many LoRA parameters as the E experts of rank r."""
    return single_lora_step(args, device, dtype, rank=args.experts * args.rank)


def autocast(device, args):
    if args.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def build(name, make_step, args, device, dtype) -> dict:
    """A method ready to time: its step function warmed up, its resident memory, its
    trainable parameter count; or {"method", "error"} when it does not fit."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
    try:
        step, trainable = make_step(args, device, dtype)
        for _ in range(args.warmup):
            step()
        sync(device)
    except torch.OutOfMemoryError:
        return {"method": name, "error": "out of memory"}
    built = {"method": name, "step": step, "trainable_parameters": trainable, "step_s": []}
    if device.type == "cuda":  # weights, gradients and optimizer state it keeps between steps
        built["resident_gib"] = (torch.cuda.memory_allocated() - before) / 2**30
        built["step_peak_gib"] = 0.0
    return built


def time_interleaved(methods: list[dict], args, device) -> None:
    """args.rounds rounds; in each, every method runs args.steps_per_round timed steps,
    the starting method rotating from round to round. Step times go to method["step_s"]."""
    for round_index in range(args.rounds):
        shift = round_index % len(methods)
        for method in methods[shift:] + methods[:shift]:
            if "error" in method:
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                resident = torch.cuda.memory_allocated()
            try:
                for _ in range(args.steps_per_round):
                    sync(device)
                    started = time.perf_counter()
                    method["step"]()
                    sync(device)
                    method["step_s"].append(time.perf_counter() - started)
            except torch.OutOfMemoryError:
                method["error"] = "out of memory"
                continue
            if device.type == "cuda":  # activations and temporaries of its own steps
                method["step_peak_gib"] = max(method["step_peak_gib"],
                                              (torch.cuda.max_memory_allocated() - resident) / 2**30)


def summary(method: dict, batch_size: int) -> dict:
    """Median step and its spread, as utterances/s (the median step's rate) and seconds."""
    if "error" in method:
        return {"method": method["method"], "error": method["error"]}
    times = sorted(method["step_s"])
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    median = statistics.median(times)
    result = {"method": method["method"], "batch_size": batch_size,
              "trainable_parameters": method["trainable_parameters"],
              "utterances_per_s": batch_size / median, "step_s_median": median,
              "step_s_p25_p75": [quartiles[0], quartiles[2]], "step_s_min_max": [times[0], times[-1]],
              "timed_steps": len(times)}
    if "resident_gib" in method:  # its own weights, optimizer state and step: what it needs alone
        result["peak_gib"] = method["resident_gib"] + method["step_peak_gib"]
    return result


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default=None,
                        help="default: large-v2 on CUDA, small on CPU")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on CUDA, 2 on CPU")
    parser.add_argument("--tokens", type=int, default=64, help="label length")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved timing rounds (default: 10 on CUDA, 5 on CPU)")
    parser.add_argument("--steps-per-round", type=int, default=None,
                        help="timed steps of each method per round (default: 3 on CUDA, 1 on CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--routing", choices=["soft", "topk"], default="soft")
    parser.add_argument("--methods", default="ours,seed,single-lora,single-lora-Er")
    parser.add_argument("--compile", action="store_true", help="torch.compile encoder and decoder (ours)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.config = args.config or ("large-v2" if device.type == "cuda" else "small")
    args.batch_size = args.batch_size or (16 if device.type == "cuda" else 2)
    args.rounds = args.rounds or (10 if device.type == "cuda" else 5)
    args.steps_per_round = args.steps_per_round or (3 if device.type == "cuda" else 1)
    args.bf16 = device.type == "cuda"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    machine = torch.cuda.get_device_name() if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"# {args.config} config, {args.experts} experts, rank {args.rank}, batch {args.batch_size}, "
          f"{args.tokens}-token labels, {'bf16 autocast' if args.bf16 else 'fp32'} on {machine}; "
          f"{args.rounds} interleaved rounds of {args.steps_per_round} timed step(s) per method")
    makers = {"ours": ours_step, "seed": seed_step, "single-lora": single_lora_step,
              "single-lora-Er": single_lora_same_parameters_step}
    unknown = [name for name in args.methods.split(",") if name not in makers]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {','.join(makers)}")
    methods = [build(name, makers[name], args, device, dtype) for name in args.methods.split(",")]
    time_interleaved(methods, args, device)
    results = [summary(method, args.batch_size) for method in methods]
    for result in results:
        print(json.dumps(result))
    by_name = {r["method"]: r for r in results if "utterances_per_s" in r}
    if "ours" in by_name:
        for other in ("seed", "single-lora", "single-lora-Er"):
            if other in by_name:
                ratio = by_name["ours"]["utterances_per_s"] / by_name[other]["utterances_per_s"]
                print(f"ours / {other}: {ratio:.2f}x (ratio of median steps)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
