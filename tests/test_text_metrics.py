"""Transcript normalisation, SAP cleaning and corpus-level WER/CER."""

from __future__ import annotations

import pytest

from whisper_moe.metrics import cer, per_group_error_rates, wer
from whisper_moe.text import clean_sap_transcript, normalize_transcript


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello, World!  What's up?", "hello world whats up"),
        ("It\u2019s twenty-one degrees.", "its twenty one degrees"),
        ("  Turn ON the\tlights...  ", "turn on the lights"),
        ("\uff34urn on", "turn on"),  # full-width letter
        ("Call 911 now", "call 911 now"),  # digits are not spelled out
        ("", ""),
        (None, ""),
        ("?!.", ""),
    ],
)
def test_normalize_transcript(raw, expected):
    assert normalize_transcript(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("[question prompt] What is your favorite food?", "What is your favorite food?"),
        ("I (disfluency) want some water.", "I want some water."),
        ("Call (cs:mom) my mother (laughs) please", "Call my mother please"),
        ("Turn [unintelligible] off the (( nested) mark) lights .", "Turn off the lights."),
        ("[silence] (noise)", ""),
        ("Plain text stays.", "Plain text stays."),
        ("broken ] bracket ( here", "broken bracket here"),
        (None, ""),
    ],
)
def test_clean_sap_transcript(raw, expected):
    assert clean_sap_transcript(raw) == expected


def test_wer_and_cer_ignore_case_and_punctuation():
    assert wer(["Turn on the lights."], ["turn on the lights"]) == 0.0
    assert cer(["Turn on the lights."], ["TURN ON THE LIGHTS!"]) == 0.0


def test_wer_is_corpus_level():
    refs = ["a b c d e f g h i j", "x"]
    hyps = ["a b c d e f g h i j", "y"]
    assert wer(refs, hyps) == pytest.approx(1 / 11)  # not the mean of 0.0 and 1.0
    assert cer(["abcd"], ["abxd"]) == pytest.approx(0.25)


def test_empty_references_are_handled():
    assert wer([""], [""]) == 0.0
    assert wer(["..."], ["noise words"]) == 1.0  # nothing to say, something said
    assert wer(["a b", ""], ["a b", "extra"]) == pytest.approx(0.5)  # one insertion / 2 words
    assert cer([""], [""]) == 0.0
    assert wer(["a b"], [""]) == 1.0
    with pytest.raises(ValueError):
        wer(["a"], ["a", "b"])


def test_per_group_error_rates():
    rows = [
        {"group": "ALS", "text": "turn on the lights", "hypothesis": "turn off the lights"},
        {"group": "ALS", "text": "call mom", "hypothesis": "call mom"},
        {"group": "Stroke", "reference": "play music", "prediction": "play music"},
        {"group": "Stroke", "reference": "", "prediction": None},
    ]
    rates = per_group_error_rates(rows)
    assert set(rates) == {"ALS", "Stroke", "overall"}
    assert rates["ALS"]["wer"] == pytest.approx(1 / 6)
    assert rates["ALS"]["n"] == 2
    assert rates["Stroke"] == {"wer": 0.0, "cer": 0.0, "n": 2, "reference_words": 2}
    assert rates["overall"]["wer"] == pytest.approx(1 / 8)
    assert rates["overall"]["n"] == 4


def test_per_group_refuses_ambiguous_rows():
    with pytest.raises(ValueError, match="reserved"):
        per_group_error_rates([{"group": "overall", "text": "a", "hypothesis": "a"}])
    with pytest.raises(KeyError):
        per_group_error_rates([{"group": "g", "text": "a"}])


def test_whisper_english_normaliser_with_the_tokenizers_spelling_mapping():
    from whisper_moe.text import WHISPER_ENGLISH, whisper_normalizer

    normalise, name = whisper_normalizer({"colour": "color"})
    assert name == WHISPER_ENGLISH
    assert normalise("The Colour, Mr. Smith? I won't!") == "the color mister smith i will not"
    # Ours keeps spellings, digits and contractions as written; Whisper's standardises them.
    refs, hyps = ["it is twenty one degrees"], ["It's 21 degrees."]
    assert wer(refs, hyps, normalise) == 0.0
    assert wer(refs, hyps) == pytest.approx(4 / 5)  # "its 21 degrees": 2 substitutions, 2 deletions


def test_without_a_spelling_mapping_whisper_basic_normaliser_is_used():
    from whisper_moe.text import WHISPER_BASIC, whisper_normalizer

    normalise, name = whisper_normalizer(None)
    assert name == WHISPER_BASIC
    assert normalise("  It's the Colour.  ") == "it s the colour"  # no trailing space left
    assert wer(["it is"], ["It's"], normalise) == pytest.approx(0.5)


def test_the_spelling_mapping_comes_from_the_tokenizer_folders_normalizer_json(tmp_path):
    import json

    from transformers import AutoTokenizer

    from whisper_moe.model.base import demo_tokenizer
    from whisper_moe.text import spelling_mapping_of

    demo_tokenizer().save_pretrained(tmp_path)
    without = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert spelling_mapping_of(without) is None  # the offline demo base ships no normalizer.json
    (tmp_path / "normalizer.json").write_text(json.dumps({"colour": "color"}))
    with_mapping = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert spelling_mapping_of(with_mapping) == {"colour": "color"}


@pytest.mark.parametrize("raw, expected", [
    ("[question prompt] I like (disfluency) pizza number 1.", "I like pizza number 1."),
    ("I (um) want (the the) water.", "I um want the the water."),
    ("Call (cs:mom) my mother (laughs) please", "Call my mother please"),
    ("[silence] (noise)", ""),
    (None, ""),
])
def test_sap_transcript_with_disfluencies_keeps_the_disfluent_words(raw, expected):
    from whisper_moe.text import sap_transcript_with_disfluencies

    assert sap_transcript_with_disfluencies(raw) == expected


def test_sap_scoring_clips_each_utterance_at_its_reference_length():
    from whisper_moe.metrics import clipped_min_reference_errors

    # "ab" vs "ab xyz wq": 7 insertions on 2 characters, clipped to 2; "abcd" vs "abxd": 1.
    edits, lengths = clipped_min_reference_errors([["ab"], ["abcd"]], ["ab xyz wq", "abxd"])
    assert (edits, lengths) == ([2, 1], [2, 4])
    assert sum(edits) / sum(lengths) == pytest.approx(3 / 6)  # unclipped it would be 8 / 6
    words, word_lengths = clipped_min_reference_errors([["a b"]], ["c d e f g"], unit="word")
    assert (words, word_lengths) == ([2], [2])


def test_sap_scoring_takes_the_reference_with_the_lower_error():
    from whisper_moe.metrics import clipped_min_reference_errors

    refs = [["I want water.", "I um want water."]]
    # The hypothesis kept the filler: 0 of 15 characters wrong against the second reference.
    assert clipped_min_reference_errors(refs, ["i um want water"]) == ([0], [15])
    # It dropped it: 0 of 12 against the first.
    assert clipped_min_reference_errors(refs, ["I want water"]) == ([0], [12])
    # "i wan water": 1 of 12 (first) beats 4 of 15 (second: "um " missing, "t" missing).
    assert clipped_min_reference_errors(refs, ["i wan water"]) == ([1], [12])
    # "i um wan water": 4 of 12 against the first (more edits than the second's 1 of 15).
    assert clipped_min_reference_errors(refs, ["i um wan water"]) == ([1], [15])
    # Rates decide, not edit counts: 2 clipped edits of 2 lose to 8 of 10.
    assert clipped_min_reference_errors([["ab", "xyzzzzzzzz"]], ["xy"]) == ([8], [10])
    # Empty references are ignored, and an utterance with none weighs nothing.
    assert clipped_min_reference_errors([["", "a"], [""]], ["a", "b"]) == ([0, 0], [1, 0])
