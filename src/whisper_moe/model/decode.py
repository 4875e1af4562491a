"""Batched greedy decoding with a forced prefix, identical to the training labels' prefix."""

from __future__ import annotations

import inspect

import torch


def suppressed_token_ids(tokenizer, generation_config, eot_id: int) -> list[int]:
    """Tokens never emitted in plain transcription: special tokens after end-of-text
    (timestamps, language and task tokens) and the model's own suppress list."""
    vocab_size = len(tokenizer)
    ids = set(range(eot_id + 1, vocab_size))
    ids.update(getattr(generation_config, "suppress_tokens", None) or [])
    ids.discard(eot_id)
    return sorted(i for i in ids if i >= 0)


def decoder_cache_argument(decoder) -> str:
    """The decoder's key/value-cache keyword: `cache` in newer transformers, else the old name."""
    parameters = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@torch.no_grad()
def greedy_decode(
    whisper,
    encoder_hidden: torch.Tensor,
    prefix_ids: list[int],
    eot_id: int,
    max_new_tokens: int = 128,
    suppress_ids: list[int] | None = None,
    begin_suppress_ids: list[int] | None = None,
) -> list[list[int]]:
    """Token ids after the prefix, up to (not including) end-of-text, for each utterance.

    `whisper` is a WhisperForConditionalGeneration; experts, if any, are mixed by the
    routing set around this call. Uses the decoder's key/value cache.
    """
    batch = encoder_hidden.shape[0]
    device = encoder_hidden.device
    step_input = torch.tensor([prefix_ids] * batch, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    past = None
    vocab = whisper.config.vocab_size
    suppress_mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    if suppress_ids:
        suppress_mask[torch.tensor([i for i in suppress_ids if i < vocab], device=device)] = True
    begin_mask = suppress_mask.clone()
    if begin_suppress_ids:
        begin_mask[torch.tensor([i for i in begin_suppress_ids if i < vocab], device=device)] = True
    cache_argument = decoder_cache_argument(whisper.model.decoder)
    for step in range(max_new_tokens):
        output = whisper.model.decoder(
            input_ids=step_input,
            encoder_hidden_states=encoder_hidden,
            use_cache=True,
            **{cache_argument: past},
        )
        past = output.past_key_values
        logits = whisper.proj_out(output.last_hidden_state[:, -1]).float()
        logits = logits.masked_fill(begin_mask if step == 0 else suppress_mask, float("-inf"))
        next_ids = logits.argmax(dim=-1)
        next_ids = torch.where(finished, torch.full_like(next_ids, eot_id), next_ids)
        generated.append(next_ids)
        finished |= next_ids == eot_id
        if bool(finished.all()):
            break
        step_input = next_ids[:, None]
    tokens = torch.stack(generated, dim=1).tolist() if generated else [[] for _ in range(batch)]
    return [row[: row.index(eot_id)] if eot_id in row else row for row in tokens]
