"""How sure the numbers are: speaker-bootstrap intervals for WER and WER differences, and
a permutation test for the agreement between routing and groups.

Utterances of one speaker are not independent (same voice, same recording setup), so
the bootstrap resamples whole speakers with replacement and recomputes the corpus-level
WER (summed edits over summed reference words) of the resampled set. A difference
between two systems is bootstrapped paired: both systems on the same resampled speakers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from whisper_moe.metrics import word_error_counts

BOOTSTRAP_SAMPLES = 2000
PERMUTATIONS = 1000
SEED = 0


def utterance_word_errors(refs: Sequence[str], hyps: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(edits, reference words) per utterance, after the project's normalisation."""
    counts = [word_error_counts([ref], [hyp]) for ref, hyp in zip(refs, hyps, strict=True)]
    return (np.array([c.edits for c in counts], dtype=np.float64),
            np.array([c.reference_length for c in counts], dtype=np.float64))


def per_speaker_sums(values: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """`values` summed per speaker, speakers in sorted order."""
    names, index = np.unique(np.asarray(speakers, dtype=str), return_inverse=True)
    sums = np.zeros(len(names))
    np.add.at(sums, index, values)
    return sums


def resampled_speakers(num_speakers: int, samples: int, seed: int) -> np.ndarray:
    """`[samples, num_speakers]` speaker indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, num_speakers, size=(samples, num_speakers))


def interval(values: np.ndarray) -> list[float]:
    """Central 95 % interval of bootstrap values (NaN samples, e.g. no words, dropped)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def speaker_bootstrap_wer(edits: np.ndarray, words: np.ndarray, speakers: Sequence[str],
                          samples: int = BOOTSTRAP_SAMPLES, seed: int = SEED) -> list[float]:
    """95 % speaker-bootstrap interval of the corpus WER."""
    speaker_edits, speaker_words = per_speaker_sums(edits, speakers), per_speaker_sums(words, speakers)
    draws = resampled_speakers(len(speaker_edits), samples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = speaker_edits[draws].sum(1) / speaker_words[draws].sum(1)
    return interval(rates)


def speaker_bootstrap_difference(edits_a: np.ndarray, edits_b: np.ndarray, words: np.ndarray,
                                 speakers: Sequence[str], samples: int = BOOTSTRAP_SAMPLES,
                                 seed: int = SEED) -> list[float]:
    """95 % paired speaker-bootstrap interval of WER(a) - WER(b) on the same utterances."""
    speaker_a, speaker_b = per_speaker_sums(edits_a, speakers), per_speaker_sums(edits_b, speakers)
    speaker_words = per_speaker_sums(words, speakers)
    draws = resampled_speakers(len(speaker_words), samples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        differences = (speaker_a[draws].sum(1) - speaker_b[draws].sum(1)) / speaker_words[draws].sum(1)
    return interval(differences)


def normalised_mutual_information(labels_a: Sequence, labels_b: Sequence) -> float:
    """NMI (arithmetic normalisation) of two labelings of the same items."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(labels_a, dtype=str),
                                              np.asarray(labels_b, dtype=str)))


def permuted_nmi(routes: Sequence, groups: Sequence, permutations: int, seed: int) -> np.ndarray:
    """NMI of `routes` against `permutations` shufflings of `groups`, all at once.

    Shuffling keeps both marginals, so only the mutual information changes: it is read
    from one joint-count table per shuffling. Equals sklearn's arithmetic NMI for each
    (tests check), at a thousandth of the time of calling it per shuffling.
    """
    _, route_index = np.unique(np.asarray(routes, dtype=str), return_inverse=True)
    _, group_index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    n, num_routes, num_groups = len(route_index), route_index.max() + 1, group_index.max() + 1
    if num_routes == num_groups == 1:
        return np.ones(permutations)  # sklearn's convention: two one-class labelings agree
    rng = np.random.default_rng(seed)
    shuffled = np.stack([group_index[rng.permutation(n)] for _ in range(permutations)])
    cells = (np.arange(permutations)[:, None] * num_routes + route_index[None, :]) * num_groups + shuffled
    joint = np.bincount(cells.ravel(), minlength=permutations * num_routes * num_groups)
    joint = joint.reshape(permutations, num_routes, num_groups) / n
    route_p, group_p = np.bincount(route_index) / n, np.bincount(group_index) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = joint * np.log(joint / (route_p[:, None] * group_p[None, :]))
    mutual = np.nan_to_num(terms).sum(axis=(1, 2))
    route_h, group_h = -(route_p * np.log(route_p)).sum(), -(group_p * np.log(group_p)).sum()
    mean_h = (route_h + group_h) / 2
    return np.where(mutual > 0, mutual / max(mean_h, np.finfo(float).eps), 0.0)


def nmi_permutation_test(routes: Sequence, groups: Sequence, permutations: int = PERMUTATIONS,
                         seed: int = SEED) -> dict[str, float]:
    """NMI between routing and groups, its 95 % level under shuffled groups, and the
    permutation p-value (with the +1 correction, so never 0)."""
    observed = normalised_mutual_information(routes, groups)
    null = permuted_nmi(routes, groups, permutations, seed)
    return {
        "nmi": observed,
        "nmi_permutation_95": float(np.percentile(null, 95)),
        "nmi_p_value": float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations)),
        "permutations": permutations,
    }
