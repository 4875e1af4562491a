"""The espeak-ng demo corpus: real speech of four speaker groups, deterministic, speaker-disjoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from whisper_moe.data.demo import (
    DEFAULT_GROUPS,
    SENTENCES,
    available_voices,
    make_demo_corpus,
    plan_demo_corpus,
)
from whisper_moe.data.demo.espeak import EspeakSynthesizer, imprecise_articulation, spoken_input
from whisper_moe.data.demo.plan import speech_kind_of_group, voice_of_group
from whisper_moe.data.manifest import read_manifest

SMALL = {"speakers_per_group": 3, "utterances_per_speaker": 2, "seed": 7, "progress": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo")
    return out_dir, make_demo_corpus(out_dir, **SMALL)


def test_default_groups_speak_with_espeak_voices():
    assert len(DEFAULT_GROUPS) >= 4
    assert {voice_of_group(group) for group in DEFAULT_GROUPS} <= set(available_voices())
    assert {speech_kind_of_group(group) for group in DEFAULT_GROUPS} == {
        "text", "english_phonemes", "imprecise_phonemes"}


def test_sentences_are_many_and_distinct():
    assert len(SENTENCES) >= 150
    assert len(set(SENTENCES)) == len(SENTENCES)
    assert not any(char.isdigit() for sentence in SENTENCES for char in sentence)


def test_corpus_files_and_splits(corpus):
    out_dir, paths = corpus
    assert set(paths) == {"train", "dev", "test", "report"}
    splits = {name: read_manifest(paths[name]) for name in ("train", "dev", "test")}
    all_rows = [r for rows in splits.values() for r in rows]
    assert len(all_rows) == len(DEFAULT_GROUPS) * 3 * 2
    for name, rows in splits.items():
        assert {r["group"] for r in rows} == set(DEFAULT_GROUPS), name
    speakers = [{r["speaker"] for r in rows} for rows in splits.values()]
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])
    for r in all_rows:
        assert r["text"] in SENTENCES
        assert r["audio_filepath"].startswith(str(out_dir))
    stored = json.loads(paths["train"].read_text().splitlines()[0])
    assert not stored["audio_filepath"].startswith("/")  # portable: relative to the folder
    report = json.loads(paths["report"].read_text())
    assert report["kept"] == len(all_rows) and report["skipped"] == {}
    assert sum(s["utterances"] for s in report["splits"].values()) == len(all_rows)


def test_audio_is_16k_mono_speech(corpus):
    _, paths = corpus
    for r in read_manifest(paths["test"]):
        info = sf.info(r["audio_filepath"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        samples, _ = sf.read(r["audio_filepath"], dtype="float32")
        assert r["duration"] == pytest.approx(len(samples) / 16000, abs=1e-3)
        assert 0.4 < r["duration"] < 20.0  # slow atypical speech runs longest
        assert 0.1 < np.max(np.abs(samples)) <= 1.0


def test_speakers_differ_within_a_group(corpus):
    _, paths = corpus
    report = json.loads(paths["report"].read_text())
    en_us = [s for s in report["speakers"].values() if s["group"] == "en-us"]
    assert len({(s["voice"], s["pitch"], s["rate_wpm"]) for s in en_us}) == 3
    assert len({s["voice"] for s in en_us}) == 3


def test_same_seed_gives_identical_bytes(corpus, tmp_path):
    out_dir, _ = corpus
    groups = ("en-us", "l1-hi")  # breathy +f variants included: their noise is seeded
    plan = plan_demo_corpus(groups, 3, 2, seed=7)
    again = make_demo_corpus(tmp_path, groups=groups, **SMALL, workers=1)
    for job in plan:
        assert (tmp_path / job["wav"]).read_bytes() == (out_dir / job["wav"]).read_bytes()
    rebuilt = make_demo_corpus(tmp_path, groups=groups, **SMALL, workers=2)
    for name in ("train", "dev", "test", "report"):
        assert again[name].read_bytes() == rebuilt[name].read_bytes()


def test_plan_of_a_group_does_not_depend_on_the_others():
    alone = plan_demo_corpus(["en-029"], 2, 3, seed=1)
    together = [
        j for j in plan_demo_corpus(["en-us", "en-029"], 2, 3, seed=1) if j["group"] == "en-029"
    ]
    assert alone == together
    assert alone != plan_demo_corpus(["en-029"], 2, 3, seed=2)


def test_unknown_voice_is_refused_before_synthesis(tmp_path):
    with pytest.raises(ValueError, match="en-klingon"):
        make_demo_corpus(tmp_path, groups=["en-us", "en-klingon"], **SMALL)
    with pytest.raises(ValueError, match="l1-<voice>"):
        make_demo_corpus(tmp_path, groups=["l1-klingon"], **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_an_l1_group_speaks_english_phonemes_in_the_other_languages_voice():
    job = plan_demo_corpus(["l1-de"], 1, 1, seed=3)[0]
    assert job["voice"].startswith("de+") and job["speech"] == "english_phonemes"
    synth = EspeakSynthesizer()
    spoken, as_phonemes = spoken_input(synth, {**job, "text": "Set a timer for ten minutes."})
    assert as_phonemes and spoken.startswith("[[") and spoken.endswith("]]")
    assert spoken == "[[" + synth.english_phonemes("Set a timer for ten minutes.") + "]]"
    assert "t'En" in spoken  # "ten" under English rules, not German ones


def test_atypical_speakers_are_slow_flat_and_pause_between_words():
    atypical = {job["speaker"]: job for job in plan_demo_corpus(["atypical"], 4, 1, seed=3)}
    typical = {job["speaker"]: job for job in plan_demo_corpus(["en-us"], 4, 1, seed=3)}
    assert max(j["rate_wpm"] for j in atypical.values()) < min(j["rate_wpm"] for j in typical.values())
    assert all(j["pitch_range"] <= 8 and 20 <= j["word_gap_10ms"] <= 40 for j in atypical.values())
    assert all(j["word_gap_10ms"] == 0 for j in typical.values())


def test_imprecise_articulation_is_seeded_and_changes_consonants():
    phonemes = "s'Et a# t'aIm3 fO@ t'En m'InIts r'Ed b'Vg d'0g k'Up"
    slurred = imprecise_articulation(phonemes, seed=5)
    assert slurred == imprecise_articulation(phonemes, seed=5)
    assert "s" not in slurred and "r" not in slurred  # fronted and glided
    assert slurred.split(" ")[0] in ("T'Et", "T'E")
    assert len(slurred) < len(phonemes)  # some of the six word-final stops dropped
    assert imprecise_articulation(phonemes, seed=5, final_stop_drop=0.0).split(" ")[0] == "T'Et"
    assert imprecise_articulation("", seed=1) == ""


def test_dev_and_test_speakers_can_say_fewer_utterances_than_training_speakers(tmp_path):
    paths = make_demo_corpus(tmp_path, groups=["en-us"], speakers_per_group=5,
                             utterances_per_speaker=3, seed=7, eval_utterances_per_speaker=1,
                             fractions=(0.4, 0.2, 0.4), progress=False)
    said = {name: {} for name in ("train", "dev", "test")}
    for name in said:
        for row in read_manifest(paths[name]):
            said[name][row["speaker"]] = said[name].get(row["speaker"], 0) + 1
    assert sorted(said["train"].values()) == [3, 3]
    assert list(said["dev"].values()) == [1] and sorted(said["test"].values()) == [1, 1]
    assert len(list((tmp_path / "wavs").rglob("*.wav"))) == 3 + 3 + 1 + 1 + 1  # no unused audio
    uncapped = plan_demo_corpus(["en-us"], 5, 3, seed=7)
    kept = {row["id"] for name in said for row in read_manifest(paths[name])}
    assert kept < {job["id"] for job in uncapped}
