"""Word and character error rates on normalised text, overall and per group.

Rates are corpus-level: total edits divided by total reference words (or
characters), never an average of per-utterance rates, so short commands do not
dominate. Empty references are allowed: their hypothesis words count as insertions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import jiwer

from whisper_moe.text import normalize_transcript

OVERALL_KEY = "overall"
Normaliser = Callable[[str | None], str]


@dataclass
class ErrorCounts:
    """Edits and reference length, summed before dividing (corpus-level rates)."""

    edits: int = 0
    reference_length: int = 0
    hypothesis_length: int = 0

    @property
    def rate(self) -> float:
        """edits / reference length; with no reference at all: 0.0 if nothing was
        hypothesised either, else 1.0 (any output is wrong, and no division by zero)."""
        if self.reference_length:
            return self.edits / self.reference_length
        return 0.0 if self.hypothesis_length == 0 else 1.0


def wer(refs: Sequence[str], hyps: Sequence[str], normalize: Normaliser = normalize_transcript) -> float:
    """Word error rate of hypotheses against references, after `normalize` (ours by default)."""
    return word_error_counts(refs, hyps, normalize).rate


def cer(refs: Sequence[str], hyps: Sequence[str], normalize: Normaliser = normalize_transcript) -> float:
    """Character error rate (spaces count as characters), after `normalize`."""
    return char_error_counts(refs, hyps, normalize).rate


def word_error_counts(refs: Sequence[str], hyps: Sequence[str],
                      normalize: Normaliser = normalize_transcript) -> ErrorCounts:
    """Summed word edits; empty references handled outside jiwer (it refuses them)."""
    pairs = _normalised_pairs(refs, hyps, normalize)
    counts = ErrorCounts()
    scored = [(ref, hyp) for ref, hyp in pairs if ref]
    for ref, hyp in pairs:
        if not ref:
            counts.edits += len(hyp.split())
            counts.hypothesis_length += len(hyp.split())
    if scored:
        out = jiwer.process_words([r for r, _ in scored], [h for _, h in scored])
        counts.edits += out.substitutions + out.deletions + out.insertions
        counts.reference_length += out.substitutions + out.deletions + out.hits
        counts.hypothesis_length += sum(len(h.split()) for _, h in scored)
    return counts


def char_error_counts(refs: Sequence[str], hyps: Sequence[str],
                      normalize: Normaliser = normalize_transcript) -> ErrorCounts:
    """Summed character edits, with the same empty-reference rule as words."""
    pairs = _normalised_pairs(refs, hyps, normalize)
    counts = ErrorCounts()
    scored = [(ref, hyp) for ref, hyp in pairs if ref]
    for ref, hyp in pairs:
        if not ref:
            counts.edits += len(hyp)
            counts.hypothesis_length += len(hyp)
    if scored:
        out = jiwer.process_characters([r for r, _ in scored], [h for _, h in scored])
        counts.edits += out.substitutions + out.deletions + out.insertions
        counts.reference_length += out.substitutions + out.deletions + out.hits
        counts.hypothesis_length += sum(len(h) for _, h in scored)
    return counts


def _normalised_pairs(refs: Sequence[str], hyps: Sequence[str],
                      normalize: Normaliser = normalize_transcript) -> list[tuple[str, str]]:
    """Pairs of normalised (reference, hypothesis); lengths must match."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return [(normalize(r), normalize(h)) for r, h in zip(refs, hyps, strict=True)]


def per_group_error_rates(rows: Iterable[dict]) -> dict[str, dict[str, float | int]]:
    """{group: {"wer", "cer", "n"}} for every group, plus the key "overall".

    Each row needs "group", a reference ("reference" or else "text") and a
    hypothesis ("hypothesis" or else "prediction"). A group literally named
    "overall" is refused because it would be indistinguishable from the total.
    """
    by_group: dict[str, list[tuple[str, str]]] = defaultdict(list)
    everything: list[tuple[str, str]] = []
    for row in rows:
        pair = (_reference_of(row), _hypothesis_of(row))
        group = str(row.get("group", ""))
        if group == OVERALL_KEY:
            raise ValueError(f"group name {OVERALL_KEY!r} is reserved for the total; rename it")
        by_group[group].append(pair)
        everything.append(pair)
    result = {group: _rates(pairs) for group, pairs in sorted(by_group.items())}
    result[OVERALL_KEY] = _rates(everything)
    return result


def _rates(pairs: list[tuple[str, str]]) -> dict[str, float | int]:
    """WER, CER and utterance count of a list of (reference, hypothesis)."""
    refs = [ref for ref, _ in pairs]
    hyps = [hyp for _, hyp in pairs]
    words = word_error_counts(refs, hyps)
    return {
        "wer": words.rate,
        "cer": char_error_counts(refs, hyps).rate,
        "n": len(pairs),
        "reference_words": words.reference_length,
    }


def _reference_of(row: dict) -> str:
    """The reference text of an evaluation row."""
    value = row.get("reference", row.get("text"))
    if value is None:
        raise KeyError(f"row {row.get('id', '?')!r} has neither 'reference' nor 'text'")
    return str(value)


def _hypothesis_of(row: dict) -> str:
    """The hypothesis text of an evaluation row (None means the model said nothing)."""
    if "hypothesis" not in row and "prediction" not in row:
        raise KeyError(f"row {row.get('id', '?')!r} has neither 'hypothesis' nor 'prediction'")
    value = row.get("hypothesis", row.get("prediction"))
    return "" if value is None else str(value)


def clipped_min_reference_errors(reference_sets: Sequence[Sequence[str]], hyps: Sequence[str],
                                 unit: str = "char",
                                 normalize: Normaliser = normalize_transcript) -> tuple[list[int], list[int]]:
    """Per utterance (edits, reference length) as the Speech Accessibility Project challenge
    scores: several references per utterance (its transcript with and without disfluencies),
    each utterance's edits clipped at its reference length (an error rate of at most 100 %, so
    a hallucinating hypothesis cannot outweigh the rest), and the reference with the lower
    clipped rate kept (the first on a tie). `unit` is "char" or "word". Summing both lists
    gives the corpus-level rate. Empty references are ignored; an utterance with none
    counts (0, 0).
    """
    if unit not in ("char", "word"):
        raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
    if len(reference_sets) != len(hyps):
        raise ValueError(f"{len(reference_sets)} reference sets but {len(hyps)} hypotheses")
    counter = char_error_counts if unit == "char" else word_error_counts
    edits, lengths = [], []
    for references, hyp in zip(reference_sets, hyps, strict=True):
        best: tuple[float, int, int] | None = None
        for reference in references:
            counts = counter([reference], [hyp], normalize)
            if not counts.reference_length:
                continue
            clipped = min(counts.edits, counts.reference_length)
            rate = clipped / counts.reference_length
            if best is None or rate < best[0]:
                best = (rate, clipped, counts.reference_length)
        edits.append(best[1] if best else 0)
        lengths.append(best[2] if best else 0)
    return edits, lengths
