"""espeak-ng as a library: a ctypes binding, the voices it has, one utterance's audio.

espeak-ng (shipped as a shared library plus voice data by the `espeakng-loader`
package, no system install) keeps internal state between utterances (e.g. its pitch
flutter position), so each group is synthesised in its own fresh worker process:
`python -m whisper_moe.data.demo.espeak --worker` reads jobs on stdin.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from whisper_moe.data.audio import TARGET_SAMPLE_RATE, resample_audio

# espeak-ng API constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PHONEME_INPUT = 0x100  # espeakPHONEMES: text inside [[ ]] is read as phoneme mnemonics
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 3, 4, 7
# the voice whose pronunciation rules give the English phonemes of L1-accented speech
ENGLISH_PHONEME_VOICE = "en-us"


def available_voices() -> list[str]:
    """Lower-cased espeak-ng language voice names (for checks and error messages)."""
    lang_dir = Path(espeak_data_path()) / "lang"
    return sorted({path.name.lower() for path in lang_dir.rglob("*") if path.is_file()})


def espeak_data_path() -> str:
    import espeakng_loader

    return espeakng_loader.get_data_path()


class EspeakSynthesizer:
    """Thin ctypes binding of libespeak-ng in synchronous mode (one per process)."""

    _CALLBACK = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
    )

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._declare_signatures()
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data path {data_path!r}")
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # keep a reference: C holds it
        self._lib.espeak_SetSynthCallback(self._callback)

    def _declare_signatures(self) -> None:
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p

    def _collect(self, wav, num_samples, events) -> int:
        """Synth callback: copy each block of int16 samples; 0 means keep going."""
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def english_phonemes(self, text: str) -> str:
        """text as espeak's ASCII phoneme mnemonics under English (en-us) rules, one word
        per space-separated item: what an L1-accented voice is then made to say."""
        if self._lib.espeak_SetVoiceByName(ENGLISH_PHONEME_VOICE.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {ENGLISH_PHONEME_VOICE!r}")
        remaining = ctypes.c_char_p(text.encode("utf-8"))
        clauses = []
        while remaining.value:  # one clause per call; the library advances the pointer
            clause = self._lib.espeak_TextToPhonemes(ctypes.byref(remaining), _CHARS_UTF8, 0)
            clauses.append((clause or b"").decode("utf-8").strip())
        return " ".join(clause for clause in clauses if clause)

    def speak(
        self,
        text: str,
        voice: str,
        rate_wpm: int,
        pitch: int,
        pitch_range: int,
        noise_seed: int,
        word_gap_10ms: int = 0,
        phoneme_input: bool = False,
    ) -> np.ndarray:
        """int16 samples at self.sample_rate for text in the given voice.

        With phoneme_input, text inside [[ ]] is phoneme mnemonics spoken with the
        voice's own phoneme table: English phonemes in a German voice sound German.
        The library's noise generator is reseeded first: breathy variants (+f2, +f5,
        ...) add noise from it, and espeak_Initialize seeds it from the clock.
        """
        self._lib.espeak_ng_SetRandSeed(noise_seed & 0x7FFFFFFF)
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        settings = [(_PARAM_RATE, rate_wpm), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range)]
        if word_gap_10ms:  # otherwise left at the voice's own default
            settings.append((_PARAM_WORDGAP, word_gap_10ms))
        for parameter, value in settings:
            self._lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks = []
        encoded = text.encode("utf-8")
        flags = _CHARS_UTF8 | (_PHONEME_INPUT if phoneme_input else 0)
        status = self._lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, flags, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed ({status}) for {text!r}")
        self._lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def spoken_input(synth: EspeakSynthesizer, job: dict) -> tuple[str, bool]:
    """(what espeak reads, whether it is phonemes) for a job's `speech` kind.

    text: the sentence in the voice's own language rules; english_phonemes: the sentence's
    English phonemes in the voice's phoneme table (an L1 accent); imprecise_phonemes: the
    English phonemes with the articulation errors of `imprecise_articulation`.
    """
    kind = job.get("speech", "text")
    if kind == "text":
        return job["text"], False
    phonemes = synth.english_phonemes(job["text"])
    if kind == "english_phonemes":
        return f"[[{phonemes}]]", True
    if kind == "imprecise_phonemes":
        return f"[[{imprecise_articulation(phonemes, job['noise_seed'])}]]", True
    raise ValueError(f"unknown speech kind {kind!r} in job {job['id']!r}")


WORD_FINAL_STOPS = frozenset("ptkbdg")
# fronted sibilants and glided r: imprecise consonants, as in dysarthric speech
CONSONANT_SUBSTITUTIONS = str.maketrans({"s": "T", "z": "D", "r": "w"})


def imprecise_articulation(phonemes: str, seed: int, final_stop_drop: float = 0.8) -> str:
    """English phoneme mnemonics with simulated imprecise articulation: most word-final
    stops dropped (seeded, so the same utterance always loses the same ones), sibilants
    fronted to th-sounds and r glided to w."""
    rng = np.random.default_rng(seed)
    words = []
    for word in phonemes.split(" "):
        if word and word[-1] in WORD_FINAL_STOPS and rng.random() < final_stop_drop:
            word = word[:-1]
        words.append(word.translate(CONSONANT_SUBSTITUTIONS))
    return " ".join(words)


def render_utterance(synth: EspeakSynthesizer, job: dict) -> np.ndarray:
    """Speech for one job as 16 kHz int16: resample, speaker gain, seeded noise."""
    spoken, phoneme_input = spoken_input(synth, job)
    raw = synth.speak(
        spoken,
        job["voice"],
        job["rate_wpm"],
        job["pitch"],
        job["pitch_range"],
        job["noise_seed"],
        word_gap_10ms=job.get("word_gap_10ms", 0),
        phoneme_input=phoneme_input,
    )
    if raw.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {job['id']!r}")
    speech = resample_audio(raw.astype(np.float32) / 32768.0, synth.sample_rate, TARGET_SAMPLE_RATE)
    noise = np.random.default_rng(job["noise_seed"]).standard_normal(speech.size)
    mixed = speech * job["gain"] + noise.astype(np.float32) * job["noise_std"]
    return np.round(np.clip(mixed, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def worker_main() -> None:
    """Read jobs from stdin, write WAVs, print one JSON line per finished utterance."""
    request = json.load(sys.stdin)
    out_dir = Path(request["out_dir"])
    synth = EspeakSynthesizer()
    for job in request["jobs"]:
        samples = render_utterance(synth, job)
        wav_path = out_dir / job["wav"]
        wav_path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(wav_path), samples, TARGET_SAMPLE_RATE, subtype="PCM_16")
        print(json.dumps({"id": job["id"], "num_samples": int(samples.size)}), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    worker_main()
