"""The demo corpus plan: which synthetic speaker says which sentence, in which voice.

A group is one of three kinds of speech, named by its spec:
- an espeak-ng voice name (`en-us`, `en-gb-scotland`): English text read by that voice;
- `l1-<voice>` (`l1-hi`, `l1-de`): English phonemes spoken with another language's
  phoneme table, an L1 accent (the voice's own text rules mispronounce English wholesale);
- `atypical`: simulated atypical speech, as in dysarthria: slow, flat pitch, pauses
  between words, most word-final stops dropped, sibilants fronted, r glided to w.
Speakers within a group differ by voice variant (+m3, +f2, ...), pitch, pitch range
and rate, and a per-speaker channel (gain and a little background noise). The plan is
pure data, so it is deterministic and testable without audio.
"""

from __future__ import annotations

import hashlib
import random

from whisper_moe.data.demo.espeak import available_voices
from whisper_moe.data.demo.sentences import SENTENCES

# Four groups that the gate can tell apart (a held-out-speaker probe of the gate input
# recovers them well above chance) and that need different corrections: the base model
# does well on typical speech and much worse on each accent, in its own way.
DEFAULT_GROUPS = ("en-us", "atypical", "l1-hi", "l1-de")
L1_PREFIX = "l1-"
ATYPICAL = "atypical"
ATYPICAL_VOICE = "en-us"
# espeak-ng voice variants; alternating male/female so every group gets both
VOICE_VARIANTS = ("m1", "f2", "m3", "f1", "m2", "f4", "m4", "f3", "m5", "f5", "m6", "m7", "m8")


def voice_of_group(group: str) -> str:
    """The espeak-ng voice a group spec speaks with (see the module docstring)."""
    if group == ATYPICAL:
        return ATYPICAL_VOICE
    if group.startswith(L1_PREFIX):
        return group[len(L1_PREFIX):]
    return group


def speech_kind_of_group(group: str) -> str:
    """What the voice reads: the text, English phonemes, or imprecise English phonemes."""
    if group == ATYPICAL:
        return "imprecise_phonemes"
    if group.startswith(L1_PREFIX):
        return "english_phonemes"
    return "text"


def check_groups(groups) -> None:
    """Fail before any synthesis when a group's voice is not an espeak-ng voice."""
    if not groups:
        raise ValueError("groups is empty: name at least one, e.g. 'en-us', 'l1-hi' or 'atypical'")
    known = set(available_voices())
    unknown = [group for group in groups if voice_of_group(group).lower() not in known]
    if unknown:
        english = [name for name in sorted(known) if name.startswith("en")]
        raise ValueError(
            f"unknown demo group(s) {unknown}: a group is an espeak-ng voice (English voices: "
            f"{english}), '{L1_PREFIX}<voice>' for English spoken with another language's "
            f"phonemes (e.g. l1-hi, l1-de), or '{ATYPICAL}'"
        )
    if len(set(groups)) != len(groups):
        raise ValueError(f"groups has duplicates: {list(groups)}")


def plan_demo_corpus(
    groups, speakers_per_group: int, utterances_per_speaker: int, seed: int
) -> list[dict]:
    """Every utterance to make: voice settings, text, channel and output path.

    Each group draws from its own generator seeded by (seed, group), so adding a
    group does not change the others.
    """
    if speakers_per_group < 1 or utterances_per_speaker < 1:
        raise ValueError("speakers_per_group and utterances_per_speaker must be >= 1")
    if utterances_per_speaker > len(SENTENCES):
        raise ValueError(
            f"utterances_per_speaker={utterances_per_speaker} exceeds the "
            f"{len(SENTENCES)} built-in sentences"
        )
    plan: list[dict] = []
    for group in groups:
        rng = random.Random(f"{seed}:{group}")
        offset = rng.randrange(len(VOICE_VARIANTS))
        for speaker_index in range(speakers_per_group):
            speaker = _speaker_settings(group, speaker_index, offset, rng)
            for utt_index, text in enumerate(rng.sample(SENTENCES, utterances_per_speaker)):
                plan.append(_utterance_job(speaker, utt_index, text, seed))
    return plan


def _speaker_settings(group: str, speaker_index: int, offset: int, rng: random.Random) -> dict:
    """One synthetic speaker: a voice variant, prosody and a recording channel; atypical
    speakers are slow (80-100 words/min), flat (pitch range 0-8) and pause 200-400 ms
    between words."""
    variant = VOICE_VARIANTS[(offset + speaker_index) % len(VOICE_VARIANTS)]
    settings = {
        "speaker": f"{group}_spk{speaker_index:02d}",
        "group": group,
        "voice": f"{voice_of_group(group)}+{variant}",
        "speech": speech_kind_of_group(group),
        "rate_wpm": rng.randint(140, 195),
        "pitch": rng.randint(30, 75),
        "pitch_range": rng.randint(30, 90),
        "word_gap_10ms": 0,
        "gain": round(rng.uniform(0.55, 0.95), 4),
        "noise_std": round(rng.uniform(3e-4, 3e-3), 6),
    }
    if group == ATYPICAL:
        settings.update(rate_wpm=rng.randint(80, 100), pitch_range=rng.randint(0, 8),
                        word_gap_10ms=rng.randint(20, 40))
    return settings


def _utterance_job(speaker: dict, utt_index: int, text: str, seed: int) -> dict:
    """A speaker's settings plus the sentence, id, output path and noise seed."""
    utt_id = f"{speaker['speaker']}_utt{utt_index:03d}"
    return {
        **speaker,
        "id": utt_id,
        "text": text,
        "wav": f"wavs/{speaker['group']}/{utt_id}.wav",
        "noise_seed": int.from_bytes(hashlib.sha256(f"{seed}:{utt_id}".encode()).digest()[:8]),
    }


