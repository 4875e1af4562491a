"""Convert a CTranslate2 (faster-whisper) Whisper directory into a transformers directory.

CTranslate2 checkpoints are the one form of pretrained Whisper that ships inside a
Python package (no model hub needed), so importing them gives the project a real base
model offline. The converter reads CTranslate2's `model.bin` directly: the format is a
flat list of named arrays, so no CTranslate2 API is needed and any quantization it wrote
(float16, bfloat16, int8, int16) is turned back into float32.

Layout of `model.bin` (little endian), binary version 6:
    uint32 binary_version
    string spec_name, uint32 spec_revision
    uint32 n_variables, then per variable:
        string name, uint8 rank, uint32 dims[rank], uint8 dtype, uint32 n_bytes, bytes
    uint32 n_aliases, then per alias: string alias, string target
where `string` is a uint16 length (terminating NUL included) and the UTF-8 bytes + NUL.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken
from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperTokenizer

from whisper_moe.errors import WhisperMoeError
from whisper_moe.fsio import atomic_folder

# English-only Whisper checkpoints have 51864 tokens; multilingual 51865 (large-v3: 51866).
ENGLISH_ONLY_VOCAB_SIZE = 51864
WHISPER_HEAD_DIM = 64
SUPPORTED_BINARY_VERSIONS = (6,)  # every CTranslate2 release with Whisper (>= 3.0)
# Bumped whenever the written directory changes, so caches of older imports are redone.
IMPORT_FORMAT_VERSION = 1
IMPORT_RECORD = "ct2_import.json"
CT2_GELU_ACTIVATION = 3  # ctranslate2 ops::ActivationType::GELU (the exact erf form Whisper uses)

# Index = CTranslate2 DataType id (include/ctranslate2/types.h order).
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_NUMPY_DTYPES = {
    "float32": np.dtype("<f4"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # raw bits; widened to float32 in _to_float32
}


class CT2FormatError(WhisperMoeError, ValueError):
    """The source directory is not a CTranslate2 Whisper model this importer understands."""


@dataclass
class CT2Model:
    """Contents of a `model.bin`: spec identity and every variable (aliases resolved)."""

    path: Path
    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    dtypes: dict[str, str]


@dataclass
class WhisperDims:
    """Architecture sizes inferred from the weights, so any Whisper size imports."""

    n_mels: int
    d_model: int
    vocab_size: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int


# ----------------------------------------------------------------------------- model.bin


class _Reader:
    """Sequential little-endian reader over the bytes of a model.bin."""

    def __init__(self, data: memoryview, path: Path):
        self.data = data
        self.offset = 0
        self.path = path

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.data):
            raise CT2FormatError(f"{self.path}: truncated at byte {self.offset}; re-copy the model")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return value

    def string(self) -> str:
        length = self.unpack("H")
        raw = bytes(self.data[self.offset : self.offset + length])
        self.offset += length
        return raw.rstrip(b"\0").decode("utf-8")

    def array(self, dtype: np.dtype, shape: tuple[int, ...], n_bytes: int) -> np.ndarray:
        if self.offset + n_bytes > len(self.data):
            raise CT2FormatError(f"{self.path}: truncated at byte {self.offset}; re-copy the model")
        flat = np.frombuffer(
            self.data, dtype=dtype, count=n_bytes // dtype.itemsize, offset=self.offset
        )
        self.offset += n_bytes
        return flat.reshape(shape)


def read_ct2_model_bin(path: str | os.PathLike) -> CT2Model:
    """Parse a CTranslate2 `model.bin` into numpy arrays (views on the file's bytes)."""
    path = Path(path)
    if not path.is_file():
        raise CT2FormatError(f"{path}: no such file; a CTranslate2 model directory holds model.bin")
    reader = _Reader(memoryview(path.read_bytes()), path)
    version = reader.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise CT2FormatError(
            f"{path}: binary version {version} is not supported (supported: "
            f"{SUPPORTED_BINARY_VERSIONS}); re-convert the model with CTranslate2 >= 3"
        )
    spec_name = reader.string()
    spec_revision = reader.unpack("I")
    variables: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        rank = reader.unpack("B")
        shape = tuple(reader.unpack("I") for _ in range(rank))
        dtype_id = reader.unpack("B")
        n_bytes = reader.unpack("I")
        if dtype_id >= len(_CT2_DTYPES):
            raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        dtype_name = _CT2_DTYPES[dtype_id]
        variables[name] = reader.array(_NUMPY_DTYPES[dtype_name], shape, n_bytes)
        dtypes[name] = dtype_name
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
        dtypes[alias] = dtypes[target]
    return CT2Model(path, version, spec_name, spec_revision, variables, dtypes)


def _to_float32(array: np.ndarray, dtype_name: str) -> np.ndarray:
    if dtype_name == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def _float_weight(ct2: CT2Model, name: str) -> np.ndarray:
    """A weight as float32, undoing int8/int16 quantization (value / scale)."""
    if name not in ct2.variables:
        raise CT2FormatError(f"{ct2.path}: variable {name!r} is missing; is this a Whisper model?")
    value = _to_float32(ct2.variables[name], ct2.dtypes[name])
    if name + "_zero" in ct2.variables:
        raise CT2FormatError(
            f"{ct2.path}: {name} uses AWQ-style zero points, which this importer does not "
            "undo; convert the original model with a float or int8 quantization"
        )
    scale_name = name + "_scale"
    if scale_name in ct2.variables:
        scale = _to_float32(ct2.variables[scale_name], ct2.dtypes[scale_name])
        if scale.ndim == 0 or scale.size == 1:
            value = value / scale.reshape(())
        else:  # one scale per output row (int8)
            value = value / scale.reshape((-1,) + (1,) * (value.ndim - 1))
    return np.ascontiguousarray(value, dtype=np.float32)


def _scalar(ct2: CT2Model, name: str) -> int | None:
    value = ct2.variables.get(name)
    return None if value is None else int(value.reshape(()))


def _count_layers(ct2: CT2Model, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
    indices = {int(m.group(1)) for name in ct2.variables if (m := pattern.match(name))}
    if not indices or indices != set(range(len(indices))):
        raise CT2FormatError(f"{ct2.path}: {prefix} layers are missing or not numbered 0..n-1")
    return len(indices)


def infer_whisper_dims(ct2: CT2Model) -> WhisperDims:
    """Architecture sizes from weight shapes (heads from the stored scalar, else d_model / 64)."""
    if ct2.spec_name != "WhisperSpec":
        raise CT2FormatError(
            f"{ct2.path}: spec is {ct2.spec_name!r}, not 'WhisperSpec'; only Whisper models import"
        )
    activation = _scalar(ct2, "decoder/activation")
    if activation is not None and activation != CT2_GELU_ACTIVATION:
        raise CT2FormatError(f"{ct2.path}: decoder activation id {activation} is not GELU")
    conv1 = ct2.variables["encoder/conv1/weight"]
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    default_heads = max(1, d_model // WHISPER_HEAD_DIM)
    return WhisperDims(
        n_mels=n_mels,
        d_model=d_model,
        vocab_size=int(ct2.variables["decoder/embeddings/weight"].shape[0]),
        encoder_layers=_count_layers(ct2, "encoder"),
        decoder_layers=_count_layers(ct2, "decoder"),
        encoder_heads=_scalar(ct2, "encoder/num_heads") or default_heads,
        decoder_heads=_scalar(ct2, "decoder/num_heads") or default_heads,
        encoder_ffn_dim=int(ct2.variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(ct2.variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(ct2.variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(ct2.variables["decoder/position_encodings/encodings"].shape[0]),
    )


# ------------------------------------------------------------------------ weight mapping


def _linear(
    ct2: CT2Model, src: str, dst: str, out: dict[str, np.ndarray], bias: bool = True
) -> None:
    out[f"{dst}.weight"] = _float_weight(ct2, f"{src}/weight")
    if bias:
        out[f"{dst}.bias"] = _float_weight(ct2, f"{src}/bias")


def _layer_norm(ct2: CT2Model, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = _float_weight(ct2, f"{src}/gamma")
    out[f"{dst}.bias"] = _float_weight(ct2, f"{src}/beta")


def _split_rows(ct2: CT2Model, src: str, parts: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    weight = _float_weight(ct2, f"{src}/weight")
    bias = _float_weight(ct2, f"{src}/bias")
    if weight.shape[0] % parts:
        raise CT2FormatError(
            f"{ct2.path}: {src} has {weight.shape[0]} rows, not divisible by {parts}"
        )
    return np.split(weight, parts), np.split(bias, parts)


def _attention(ct2: CT2Model, src: str, dst: str, out: dict[str, np.ndarray], cross: bool) -> None:
    """Unfuse CTranslate2's packed projections. The key bias is dropped: it adds q.b_k to
    every score of a query, which softmax cancels, and transformers' k_proj has no bias."""
    if cross:
        _linear(ct2, f"{src}/linear_0", f"{dst}.q_proj", out)
        (k_w, v_w), (_, v_b) = _split_rows(ct2, f"{src}/linear_1", 2)
        out_src = f"{src}/linear_2"
    else:
        (q_w, k_w, v_w), (q_b, _, v_b) = _split_rows(ct2, f"{src}/linear_0", 3)
        out[f"{dst}.q_proj.weight"], out[f"{dst}.q_proj.bias"] = q_w, q_b
        out_src = f"{src}/linear_1"
    out[f"{dst}.k_proj.weight"] = k_w
    out[f"{dst}.v_proj.weight"], out[f"{dst}.v_proj.bias"] = v_w, v_b
    _linear(ct2, out_src, f"{dst}.out_proj", out)


def _ffn(ct2: CT2Model, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    _layer_norm(ct2, f"{src}/layer_norm", f"{dst}.final_layer_norm", out)
    _linear(ct2, f"{src}/linear_0", f"{dst}.fc1", out)
    _linear(ct2, f"{src}/linear_1", f"{dst}.fc2", out)


def whisper_state_dict(ct2: CT2Model, dims: WhisperDims) -> dict[str, torch.Tensor]:
    """transformers WhisperForConditionalGeneration weights (output projection tied, omitted)."""
    out: dict[str, np.ndarray] = {}
    enc, dec = "model.encoder", "model.decoder"
    _linear(ct2, "encoder/conv1", f"{enc}.conv1", out)
    _linear(ct2, "encoder/conv2", f"{enc}.conv2", out)
    out[f"{enc}.embed_positions.weight"] = _float_weight(
        ct2, "encoder/position_encodings/encodings"
    )
    for i in range(dims.encoder_layers):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        _layer_norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)
        _attention(ct2, f"{src}/self_attention", f"{dst}.self_attn", out, cross=False)
        _ffn(ct2, f"{src}/ffn", dst, out)
    _layer_norm(ct2, "encoder/layer_norm", f"{enc}.layer_norm", out)

    out[f"{dec}.embed_tokens.weight"] = _float_weight(ct2, "decoder/embeddings/weight")
    out[f"{dec}.embed_positions.weight"] = _float_weight(
        ct2, "decoder/position_encodings/encodings"
    )
    for i in range(dims.decoder_layers):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        _layer_norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)
        _attention(ct2, f"{src}/self_attention", f"{dst}.self_attn", out, cross=False)
        _layer_norm(ct2, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", out)
        _attention(ct2, f"{src}/attention", f"{dst}.encoder_attn", out, cross=True)
        _ffn(ct2, f"{src}/ffn", dst, out)
    _layer_norm(ct2, "decoder/layer_norm", f"{dec}.layer_norm", out)
    _check_tied_projection(ct2)
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in out.items()}


def _check_tied_projection(ct2: CT2Model) -> None:
    """Whisper ties its output projection to the token embeddings; refuse models that don't."""
    projection = ct2.variables.get("decoder/projection/weight")
    embeddings = ct2.variables["decoder/embeddings/weight"]
    if projection is None or projection is embeddings:
        return
    if not np.array_equal(projection, embeddings):
        raise CT2FormatError(
            f"{ct2.path}: decoder/projection/weight differs from the token embeddings; "
            "untied Whisper variants are not supported"
        )


# ------------------------------------------------------------------ tokenizer and configs


def read_ct2_vocabulary(src_dir: Path) -> list[str]:
    """Token strings by id, from vocabulary.json (list) or vocabulary.txt (one per line)."""
    json_path, txt_path = src_dir / "vocabulary.json", src_dir / "vocabulary.txt"
    if json_path.is_file():
        return list(json.loads(json_path.read_text(encoding="utf-8")))
    if txt_path.is_file():
        # Split on "\n" only: byte-level BPE tokens never contain it, other line breaks may occur.
        lines = txt_path.read_text(encoding="utf-8").split("\n")
        return lines[:-1] if lines and lines[-1] == "" else lines
    raise CT2FormatError(f"{src_dir}: neither vocabulary.json nor vocabulary.txt is present")


def whisper_tokenizer_from_ct2(src_dir: str | os.PathLike) -> WhisperTokenizer:
    """The directory's tokenizer.json as a WhisperTokenizer with Whisper's special tokens
    marked special and the timestamp tokens (<|0.00|> ...) added at their model ids."""
    src_dir = Path(src_dir)
    tokenizer_file = src_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CT2FormatError(
            f"{tokenizer_file}: missing; copy the matching Whisper tokenizer.json into {src_dir}"
        )
    added = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("added_tokens", [])
    specials = [t["content"] for t in added if t.get("special") and t["content"] != "<|endoftext|>"]
    tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_file), extra_special_tokens=specials)
    vocabulary = read_ct2_vocabulary(src_dir)
    missing = vocabulary[len(tokenizer) :]
    if missing:
        tokenizer.add_tokens(
            [
                AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=False)
                for t in missing
            ]
        )
    _check_tokenizer_matches_vocabulary(tokenizer, vocabulary, tokenizer_file)
    return tokenizer


def _check_tokenizer_matches_vocabulary(
    tokenizer: WhisperTokenizer, vocabulary: list[str], tokenizer_file: Path
) -> None:
    if len(tokenizer) != len(vocabulary):
        raise CT2FormatError(
            f"{tokenizer_file}: {len(tokenizer)} tokens but the model vocabulary has "
            f"{len(vocabulary)}; the tokenizer belongs to another Whisper model"
        )
    for token in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", vocabulary[-1]):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id >= len(vocabulary) or vocabulary[token_id] != token:
            raise CT2FormatError(
                f"{tokenizer_file}: token {token!r} has id {token_id} in the tokenizer but not "
                "in the model vocabulary; the tokenizer belongs to another Whisper model"
            )


def is_multilingual_vocab(vocab_size: int) -> bool:
    """English-only Whisper checkpoints have exactly 51864 tokens; all others are multilingual."""
    return vocab_size > ENGLISH_ONLY_VOCAB_SIZE


def whisper_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the control tokens that decoding and the configs need, by role."""
    roles = {
        "eot": "<|endoftext|>",
        "sot": "<|startoftranscript|>",
        "translate": "<|translate|>",
        "transcribe": "<|transcribe|>",
        "prev_sot": "<|startofprev|>",
        "no_timestamps": "<|notimestamps|>",
    }
    ids = {role: tokenizer.convert_tokens_to_ids(token) for role, token in roles.items()}
    unknown = [
        roles[role]
        for role, token_id in ids.items()
        if token_id is None or (token_id == tokenizer.unk_token_id and role != "eot")
    ]
    if unknown:
        raise ValueError(
            f"tokenizer lacks Whisper control tokens {unknown}; it is not a Whisper tokenizer"
        )
    return ids


def whisper_model_config(dims: WhisperDims, tokenizer) -> WhisperConfig:
    ids = whisper_token_ids(tokenizer)
    return WhisperConfig(
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.n_mels,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_heads,
        decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim,
        decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        begin_suppress_tokens=[220, ids["eot"]],
        bos_token_id=ids["sot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"],
        architectures=["WhisperForConditionalGeneration"],
    )


def whisper_generation_config(
    tokenizer,
    vocab_size: int,
    *,
    suppress_ids: list[int] | None = None,
    suppress_ids_begin: list[int] | None = None,
    alignment_heads: list[list[int]] | None = None,
    lang_ids: list[int] | None = None,
    max_length: int = 448,
) -> GenerationConfig:
    """Generation settings as Whisper's own checkpoints carry them (prefix ids, suppression
    lists, languages for multilingual models)."""
    ids = whisper_token_ids(tokenizer)
    multilingual = is_multilingual_vocab(vocab_size)
    settings = {
        "decoder_start_token_id": ids["sot"],
        "bos_token_id": ids["sot"],
        "eos_token_id": ids["eot"],
        "pad_token_id": ids["eot"],
        "no_timestamps_token_id": ids["no_timestamps"],
        "prev_sot_token_id": ids["prev_sot"],
        "is_multilingual": multilingual,
        "suppress_tokens": list(suppress_ids or []),
        "begin_suppress_tokens": list(
            suppress_ids_begin if suppress_ids_begin is not None else [220, ids["eot"]]
        ),
        "max_initial_timestamp_index": 50,
        "max_length": max_length,
        "return_timestamps": False,
    }
    if alignment_heads:
        settings["alignment_heads"] = [list(map(int, head)) for head in alignment_heads]
    if multilingual:
        # English-only exports often carry the multilingual language list; use it only here.
        tokens = tokenizer.convert_ids_to_tokens(list(lang_ids or []))
        settings["lang_to_id"] = {t: i for t, i in zip(tokens, lang_ids or []) if t}
        settings["task_to_id"] = {"transcribe": ids["transcribe"], "translate": ids["translate"]}
    return GenerationConfig(**settings)


# -------------------------------------------------------------------------------- import


def _read_ct2_config(src_dir: Path) -> dict:
    path = src_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CT2FormatError(f"{path}: not valid JSON ({error}); re-copy the model") from error


def write_transformers_whisper(
    dst_dir: Path,
    state_dict: dict[str, torch.Tensor],
    config: WhisperConfig,
    generation_config: GenerationConfig,
    tokenizer,
) -> None:
    """Everything `from_pretrained` needs, with nothing fetched from a hub."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    config.dtype = "float32"
    config.save_pretrained(dst_dir)
    generation_config.save_pretrained(dst_dir)
    save_file(state_dict, str(dst_dir / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(dst_dir)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(dst_dir)


def import_ct2_whisper(
    src_dir: str | os.PathLike, dst_dir: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Convert the CTranslate2 Whisper model in `src_dir` into a transformers directory
    `dst_dir` (float32 weights). Written to a temporary sibling and renamed, so `dst_dir`
    is either absent or complete. Returns `dst_dir`."""
    src_dir, dst_dir = Path(src_dir).expanduser(), Path(dst_dir).expanduser()
    if not src_dir.is_dir():
        raise CT2FormatError(
            f"{src_dir}: not a directory; pass a CTranslate2 Whisper model directory"
        )
    if dst_dir.exists() and any(dst_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{dst_dir}: exists and is not empty; remove it or pass overwrite=True"
        )

    ct2 = read_ct2_model_bin(src_dir / "model.bin")
    dims = infer_whisper_dims(ct2)
    tokenizer = whisper_tokenizer_from_ct2(src_dir)
    if len(tokenizer) != dims.vocab_size:
        raise CT2FormatError(
            f"{src_dir}: tokenizer has {len(tokenizer)} tokens, embeddings {dims.vocab_size}"
        )
    ct2_config = _read_ct2_config(src_dir)
    generation_config = whisper_generation_config(
        tokenizer,
        dims.vocab_size,
        suppress_ids=ct2_config.get("suppress_ids"),
        suppress_ids_begin=ct2_config.get("suppress_ids_begin"),
        alignment_heads=ct2_config.get("alignment_heads"),
        lang_ids=ct2_config.get("lang_ids"),
        max_length=dims.max_target_positions,
    )
    state_dict = whisper_state_dict(ct2, dims)

    with atomic_folder(dst_dir, overwrite=overwrite) as tmp_dir:
        write_transformers_whisper(
            tmp_dir, state_dict, whisper_model_config(dims, tokenizer), generation_config, tokenizer
        )
        provenance = {
            "format_version": IMPORT_FORMAT_VERSION,
            "source": str(src_dir.resolve()),
            "spec": f"{ct2.spec_name} revision {ct2.spec_revision}",
            "binary_version": ct2.binary_version,
            "source_weight_dtypes": sorted(
                {ct2.dtypes[name] for name, value in ct2.variables.items() if value.ndim > 0}
            ),
            "multilingual": is_multilingual_vocab(dims.vocab_size),
        }
        (tmp_dir / IMPORT_RECORD).write_text(json.dumps(provenance, indent=2) + "\n")
        for written in tmp_dir.iterdir():
            written.chmod(0o644)  # safetensors writes owner-only files; caches may be shared
    return dst_dir
