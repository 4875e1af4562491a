"""The demo corpus plan: which synthetic speaker says which sentence, in which voice.

Speakers differ by espeak-ng voice variant (+m3, +f2, ...), pitch, pitch range and
rate, and a per-speaker channel (gain and a little background noise). `group` is the
accent. The plan is pure data, so it is deterministic and testable without audio.
"""

from __future__ import annotations

import hashlib
import random

from whisper_moe.data.demo.espeak import available_voices
from whisper_moe.data.demo.sentences import SENTENCES

DEFAULT_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
# espeak-ng voice variants; alternating male/female so every accent gets both
VOICE_VARIANTS = ("m1", "f2", "m3", "f1", "m2", "f4", "m4", "f3", "m5", "f5", "m6", "m7", "m8")


def check_voices(accents) -> None:
    """Fail before any synthesis when an accent is not an espeak-ng voice."""
    if not accents:
        raise ValueError("accents is empty: name at least one espeak-ng voice, e.g. 'en-us'")
    known = set(available_voices())
    unknown = [accent for accent in accents if accent.lower() not in known]
    if unknown:
        english = [name for name in sorted(known) if name.startswith("en")]
        raise ValueError(f"unknown espeak-ng voice(s) {unknown}; English voices: {english}")
    if len(set(accents)) != len(accents):
        raise ValueError(f"accents has duplicates: {list(accents)}")


def plan_demo_corpus(
    accents, speakers_per_accent: int, utterances_per_speaker: int, seed: int
) -> list[dict]:
    """Every utterance to make: voice settings, text, channel and output path.

    Each accent draws from its own generator seeded by (seed, accent), so adding an
    accent does not change the others.
    """
    if speakers_per_accent < 1 or utterances_per_speaker < 1:
        raise ValueError("speakers_per_accent and utterances_per_speaker must be >= 1")
    if utterances_per_speaker > len(SENTENCES):
        raise ValueError(
            f"utterances_per_speaker={utterances_per_speaker} exceeds the "
            f"{len(SENTENCES)} built-in sentences"
        )
    plan: list[dict] = []
    for accent in accents:
        rng = random.Random(f"{seed}:{accent}")
        offset = rng.randrange(len(VOICE_VARIANTS))
        for speaker_index in range(speakers_per_accent):
            speaker = _speaker_settings(accent, speaker_index, offset, rng)
            for utt_index, text in enumerate(rng.sample(SENTENCES, utterances_per_speaker)):
                plan.append(_utterance_job(speaker, utt_index, text, seed))
    return plan


def _speaker_settings(accent: str, speaker_index: int, offset: int, rng: random.Random) -> dict:
    """One synthetic speaker: a voice variant, prosody and a recording channel."""
    variant = VOICE_VARIANTS[(offset + speaker_index) % len(VOICE_VARIANTS)]
    return {
        "speaker": f"{accent}_spk{speaker_index:02d}",
        "group": accent,
        "voice": f"{accent}+{variant}",
        "rate_wpm": rng.randint(140, 195),
        "pitch": rng.randint(30, 75),
        "pitch_range": rng.randint(30, 90),
        "gain": round(rng.uniform(0.55, 0.95), 4),
        "noise_std": round(rng.uniform(3e-4, 3e-3), 6),
    }


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


