"""One joint-training step, timed after warm-up: ours vs the seed's way vs single-LoRA PEFT.

    python benchmarks/train_step.py                       # CPU, small config
    python benchmarks/train_step.py --config large-v2     # CUDA, random large-v2, bf16

All three are measured in the same run on the same random inputs:
  ours         stacked experts (one pass of rank E*r), gate on cached pooled embeddings
  seed         PEFT adapters switched per expert: one full forward per expert, the
               per-expert logits mixed by the gate, plus a second encoder pass for the gate
  single-lora  a plain PEFT LoRA of rank r on the same modules (the speed to match)
Prints utterances/s, peak memory and the ratios; `--json FILE` also writes them.
"""

from __future__ import annotations

import argparse
import json
import platform
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

    return step


def peft_model(args, device, dtype, adapters: int):
    from peft import LoraConfig, get_peft_model

    base = random_whisper(args.config, device, dtype)
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05,
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

    return step


def single_lora_step(args, device, dtype):
    model, _ = peft_model(args, device, dtype, 1)
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

    return step


def autocast(device, args):
    if args.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def measure(name, make_step, args, device, dtype) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        step = make_step(args, device, dtype)
        for _ in range(args.warmup):
            step()
        sync(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        elapsed_s = time.perf_counter() - started
    except torch.OutOfMemoryError:
        return {"method": name, "error": "out of memory"}
    result = {"method": name, "batch_size": args.batch_size,
              "utterances_per_s": args.batch_size * args.steps / elapsed_s,
              "step_s": elapsed_s / args.steps}
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
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
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--routing", choices=["soft", "topk"], default="soft")
    parser.add_argument("--methods", default="ours,seed,single-lora")
    parser.add_argument("--compile", action="store_true", help="torch.compile encoder and decoder (ours)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.config = args.config or ("large-v2" if device.type == "cuda" else "small")
    args.batch_size = args.batch_size or (16 if device.type == "cuda" else 2)
    args.steps = args.steps or (10 if device.type == "cuda" else 3)
    args.bf16 = device.type == "cuda"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    machine = torch.cuda.get_device_name() if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"# {args.config} config, {args.experts} experts, rank {args.rank}, batch {args.batch_size}, "
          f"{args.tokens}-token labels, {'bf16 autocast' if args.bf16 else 'fp32'} on {machine}")
    makers = {"ours": ours_step, "seed": seed_step, "single-lora": single_lora_step}
    results = []
    for name in args.methods.split(","):
        result = measure(name, makers[name], args, device, dtype)
        results.append(result)
        print(json.dumps(result))
    by_name = {r["method"]: r for r in results if "utterances_per_s" in r}
    if "ours" in by_name:
        for other in ("seed", "single-lora"):
            if other in by_name:
                ratio = by_name["ours"]["utterances_per_s"] / by_name[other]["utterances_per_s"]
                print(f"ours / {other}: {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
