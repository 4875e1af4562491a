"""A synthetic multi-accent English corpus, made offline with espeak-ng.

The demo needs speech with known groups and no download: espeak-ng (shipped as a
shared library plus voice data by the `espeakng-loader` package, no system install)
speaks the same sentences in several English accents, with speaker variants made
from voice variants (+m3, +f2, ...), pitch, pitch range and rate, and a per-speaker
channel (gain and a little background noise). `group` is the accent.

Determinism: espeak-ng keeps internal state between utterances (e.g. its pitch
flutter position), so the same text spoken twice in one process does not give the
same samples. Each accent is therefore synthesised in its own fresh worker
process, in a fixed order: the same arguments and seed give byte-identical WAVs and
manifests, whatever the number of workers or the calls made before.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from whisper_moe.data.audio import TARGET_SAMPLE_RATE, resample_audio
from whisper_moe.data.manifest import (
    SPLIT_NAMES,
    speaker_disjoint_split,
    write_manifest,
)
from whisper_moe.fsio import write_json_atomic

DEFAULT_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
# espeak-ng voice variants; alternating male/female so every accent gets both
VOICE_VARIANTS = ("m1", "f2", "m3", "f1", "m2", "f4", "m4", "f3", "m5", "f5", "m6", "m7", "m8")

# espeak-ng API constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4

# Short digital-assistant commands (most of SAP is like this) and read sentences.
# Numbers are spelled out so the text is exactly what is spoken.
SENTENCES = (
    "Turn on the kitchen lights.",
    "Set a timer for ten minutes.",
    "What is the weather like tomorrow?",
    "Play some relaxing music.",
    "Call my sister on her mobile.",
    "Remind me to take my medicine at eight.",
    "Turn the volume down a little.",
    "What time is it in London?",
    "Add milk and eggs to my shopping list.",
    "Wake me up at six thirty.",
    "Read my new messages.",
    "Send a text to David saying I am running late.",
    "Turn off the bedroom fan.",
    "How long is my drive to work?",
    "Pause the music.",
    "Skip to the next song.",
    "Set the thermostat to seventy degrees.",
    "Open the garage door.",
    "Lock the front door.",
    "What is on my calendar today?",
    "Cancel my alarm for tomorrow.",
    "Call the doctor's office.",
    "How many ounces are in a cup?",
    "Tell me a joke.",
    "Turn on the news.",
    "What is the capital of Canada?",
    "Find a pharmacy near me.",
    "Start a stopwatch.",
    "Dim the living room lights to half.",
    "Play the latest episode of my podcast.",
    "Remind me to water the plants on Sunday.",
    "Is it going to rain this afternoon?",
    "Show me pictures from last summer.",
    "Turn up the heat in the bathroom.",
    "Order more paper towels.",
    "What is twelve times fourteen?",
    "Spell the word necessary.",
    "Call my daughter.",
    "How do you say thank you in Spanish?",
    "Stop the timer.",
    "Repeat that, please.",
    "Turn on the television.",
    "Change the channel to the weather station.",
    "Read me the headlines.",
    "What is the score of the football game?",
    "Set an alarm for seven in the morning.",
    "Add a meeting with Sarah on Friday at noon.",
    "Navigate to the nearest gas station.",
    "What is the phone number for the library?",
    "Turn off all the lights.",
    "Make the screen brighter.",
    "How far away is the moon?",
    "Play my favorite playlist.",
    "Shuffle my songs.",
    "What movies are playing tonight?",
    "Tell me the recipe for pancakes.",
    "Convert five miles to kilometers.",
    "Who won the game last night?",
    "Take a note that the plumber comes on Tuesday.",
    "Read my last note.",
    "Turn on do not disturb.",
    "Call home.",
    "What day of the week is Christmas this year?",
    "How much is a dozen eggs?",
    "Remind me to call mom when I get home.",
    "Check my email.",
    "Reply to the last message with okay.",
    "What is the temperature outside?",
    "Close the blinds in the office.",
    "Start the robot vacuum.",
    "Turn the oven on to three hundred fifty degrees.",
    "Play the radio.",
    "Volume up.",
    "Go back.",
    "Open the camera.",
    "Take a picture.",
    "Answer the call.",
    "Hang up.",
    "Mute the microphone.",
    "Turn on the porch light at sunset.",
    "Schedule a ride to the airport at five.",
    "How is the traffic on the highway?",
    "Find a quiet coffee shop nearby.",
    "Book a table for two at seven.",
    "What is the definition of resilient?",
    "Set a reminder to pay the electric bill.",
    "Call the pharmacy and refill my prescription.",
    "What should I wear today?",
    "Play the sound of ocean waves.",
    "Read the next chapter of my book.",
    "Turn on captions.",
    "Say good night.",
    "Did I lock the back door?",
    "How many steps did I walk today?",
    "Show me the bus schedule.",
    "When does the grocery store close?",
    "Tell my neighbor that the package arrived.",
    "Turn the fan to high speed.",
    "Play something upbeat for cooking.",
    "Remind me in one hour to check the laundry.",
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A warm breeze drifted across the quiet harbor.",
    "The children planted tomatoes behind the old barn.",
    "Please bring your own chair to the picnic.",
    "The train to the city leaves every twenty minutes.",
    "My grandfather built this table by hand.",
    "We watched the sunrise from the top of the hill.",
    "The library opens early on Saturday mornings.",
    "Rain tapped gently against the kitchen window.",
    "He forgot his umbrella at the bus stop.",
    "The soup needs a little more salt.",
    "Our neighbors have a friendly golden retriever.",
    "The museum added a new exhibit about ancient ships.",
    "I usually drink tea in the afternoon.",
    "The river was too cold for swimming.",
    "They painted the fence a bright shade of blue.",
    "Fresh bread smells wonderful in the morning.",
    "The meeting was moved to Thursday afternoon.",
    "A small bird landed on the garden wall.",
    "The bakery on the corner sells excellent muffins.",
    "Please speak slowly and clearly into the microphone.",
    "The mountains were covered in fresh snow.",
    "My phone battery runs out too quickly.",
    "We need to leave before the traffic gets heavy.",
    "The old clock in the hall still keeps perfect time.",
    "Every evening the lighthouse beam sweeps across the bay.",
    "The doctor said I should walk every day.",
    "Her brother plays the violin in an orchestra.",
    "Thunder rolled over the valley all night.",
    "The farmer sold apples and pears at the market.",
    "Good morning, how are you feeling today?",
    "I would like a glass of water, please.",
    "The package should arrive by Wednesday.",
    "Can you help me find my glasses?",
    "The cat is sleeping on the warm windowsill.",
    "We are going to visit my aunt next weekend.",
    "The bridge is closed for repairs until June.",
    "A gentle wind moved through the tall grass.",
    "My favorite color is green.",
    "The kettle whistled loudly on the stove.",
    "He wrote a long letter to his old friend.",
    "The students listened carefully to the story.",
    "Please remember to turn off the stove.",
    "The garden looks beautiful in the spring.",
    "Yesterday we walked along the sandy beach.",
    "The pilot announced a short delay.",
    "I need to buy new shoes for the wedding.",
    "The ice cream melted quickly in the sun.",
    "Thank you for your patience and your help.",
    "Seven people waited patiently in the long line.",
    "The band played until almost midnight.",
)


def make_demo_corpus(
    out_dir: str | os.PathLike,
    accents: tuple[str, ...] | list[str] = DEFAULT_ACCENTS,
    speakers_per_accent: int = 4,
    utterances_per_speaker: int = 12,
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Synthesise the corpus into out_dir; return paths {"train","dev","test","report"}.

    Writes out_dir/wavs/<accent>/<utterance>.wav (16 kHz mono PCM16), the three
    speaker-disjoint manifests (stratified by accent) and data_report.json.
    """
    out_dir = Path(out_dir)
    check_voices(accents)
    plan = plan_demo_corpus(accents, speakers_per_accent, utterances_per_speaker, seed)
    num_samples = synthesize_plan(plan, out_dir, workers=workers, progress=progress)
    rows = [_manifest_row(job, num_samples[job["id"]]) for job in plan]
    _remove_stale_wavs(out_dir, {job["wav"] for job in plan})
    splits = speaker_disjoint_split(rows, fractions=fractions, seed=seed, key="group")
    paths = {name: write_manifest(out_dir / f"{name}.jsonl", splits[name]) for name in SPLIT_NAMES}
    report = _demo_report(plan, splits, accents, seed, fractions)
    paths["report"] = write_json_atomic(out_dir / "data_report.json", report, sort_keys=True)
    return paths


def available_voices() -> list[str]:
    """Lower-cased espeak-ng language voice names (for checks and error messages)."""
    lang_dir = Path(_espeak_data_path()) / "lang"
    return sorted({path.name.lower() for path in lang_dir.rglob("*") if path.is_file()})


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


def synthesize_plan(
    plan: list[dict], out_dir: Path, workers: int | None = None, progress: bool = True
) -> dict[str, int]:
    """Run one fresh worker process per accent (see module docstring); {id: samples}."""
    by_group: dict[str, list[dict]] = {}
    for job in plan:
        by_group.setdefault(job["group"], []).append(job)
    workers = workers or max(1, min(len(by_group), os.cpu_count() or 1, 4))
    num_samples: dict[str, int] = {}
    lock = threading.Lock()
    with tqdm(total=len(plan), desc="demo corpus", unit="utt", disable=not progress) as bar:

        def run_group(jobs: list[dict]) -> None:
            for utt_id, samples in _run_worker(jobs, out_dir):
                with lock:
                    num_samples[utt_id] = samples
                    bar.update(1)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(run_group, jobs) for jobs in by_group.values()]:
                future.result()
    missing = [job["id"] for job in plan if job["id"] not in num_samples]
    if missing:
        raise RuntimeError(f"espeak-ng workers returned no audio for {missing[:5]}")
    return num_samples


def _run_worker(jobs: list[dict], out_dir: Path):
    """Yield (id, num_samples) as a worker process finishes each utterance."""
    request = json.dumps({"out_dir": str(out_dir), "jobs": jobs})
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryFile() as stderr_file:
        command = [sys.executable, "-m", "whisper_moe.data.demo", "--worker"]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file, env=env
        )
        try:
            process.stdin.write(request.encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # the worker died at start-up; its stderr below says why
        for line in process.stdout:
            result = json.loads(line)
            yield result["id"], result["num_samples"]
        if process.wait() != 0:
            stderr_file.seek(0)
            tail = stderr_file.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"espeak-ng worker for {jobs[0]['group']!r} failed:\n{tail}")


def _manifest_row(job: dict, num_samples: int) -> dict:
    """The manifest line of one synthesised utterance (path relative to out_dir)."""
    return {
        "id": job["id"],
        "audio_filepath": job["wav"],
        "text": job["text"],
        "duration": round(num_samples / TARGET_SAMPLE_RATE, 4),
        "speaker": job["speaker"],
        "group": job["group"],
        "voice": job["voice"],
    }


def _remove_stale_wavs(out_dir: Path, planned: set[str]) -> None:
    """Delete WAVs under out_dir/wavs left by an earlier, different run."""
    wav_root = out_dir / "wavs"
    for path in wav_root.rglob("*.wav"):
        if path.relative_to(out_dir).as_posix() not in planned:
            path.unlink()


def _demo_report(plan: list[dict], splits: dict, accents, seed: int, fractions) -> dict:
    """What was made: per split counts, durations and groups, and each speaker's voice."""
    split_of = {row["speaker"]: name for name, rows in splits.items() for row in rows}
    speakers = {}
    for job in plan:
        speakers[job["speaker"]] = {
            key: job[key] for key in ("group", "voice", "rate_wpm", "pitch", "pitch_range")
        }
        speakers[job["speaker"]]["split"] = split_of[job["speaker"]]
    return {
        "source": "demo",
        "seed": seed,
        "accents": list(accents),
        "fractions": list(fractions),
        "kept": len(plan),
        "skipped": {},
        "fixed": {"resampled": 0, "downmixed": 0},
        "splits": {name: _split_summary(rows) for name, rows in splits.items()},
        "speakers": speakers,
    }


def _split_summary(rows: list[dict]) -> dict:
    """Utterances, speakers, hours and per-group counts of one split."""
    return {
        "utterances": len(rows),
        "speakers": len({row["speaker"] for row in rows}),
        "duration_s": round(sum(row["duration"] for row in rows), 3),
        "groups": dict(sorted(Counter(row["group"] for row in rows).items())),
    }


# ---------------------------------------------------------------- worker process


def _espeak_data_path() -> str:
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

    def _collect(self, wav, num_samples, events) -> int:
        """Synth callback: copy each block of int16 samples; 0 means keep going."""
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def speak(
        self, text: str, voice: str, rate_wpm: int, pitch: int, pitch_range: int, noise_seed: int
    ) -> np.ndarray:
        """int16 samples at self.sample_rate for text in the given voice.

        The library's noise generator is reseeded first: breathy variants (+f2, +f5,
        ...) add noise from it, and espeak_Initialize seeds it from the clock.
        """
        self._lib.espeak_ng_SetRandSeed(noise_seed & 0x7FFFFFFF)
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        for parameter, value in (
            (_PARAM_RATE, rate_wpm),
            (_PARAM_PITCH, pitch),
            (_PARAM_RANGE, pitch_range),
        ):
            self._lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks = []
        encoded = text.encode("utf-8")
        status = self._lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed ({status}) for {text!r}")
        self._lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def render_utterance(synth: EspeakSynthesizer, job: dict) -> np.ndarray:
    """Speech for one job as 16 kHz int16: resample, speaker gain, seeded noise."""
    raw = synth.speak(
        job["text"],
        job["voice"],
        job["rate_wpm"],
        job["pitch"],
        job["pitch_range"],
        job["noise_seed"],
    )
    if raw.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {job['id']!r}")
    speech = resample_audio(raw.astype(np.float32) / 32768.0, synth.sample_rate, TARGET_SAMPLE_RATE)
    noise = np.random.default_rng(job["noise_seed"]).standard_normal(speech.size)
    mixed = speech * job["gain"] + noise.astype(np.float32) * job["noise_std"]
    return np.round(np.clip(mixed, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def _worker_main() -> None:
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
    _worker_main()
