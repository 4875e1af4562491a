"""Datasets, decoder labels and collation for training and evaluation.

Labels use exactly the decoder prefix the generator forces and end with a learned
end-of-text token; a target longer than the decoder can hold is dropped with a reason.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from whisper_moe.data.audio import AudioError, load_audio

IGNORE_INDEX = -100


def encode_target(tokenizer, text: str, prefix_ids: list[int], eot_id: int) -> list[int]:
    """prefix + text tokens + end-of-text: the full sequence the decoder must produce."""
    text_ids = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    return list(prefix_ids) + list(text_ids) + [eot_id]


class UtteranceDataset(Dataset):
    """Manifest rows -> (id, audio, target token ids, group); bad rows are counted, not fatal.

    Targets are tokenised once up front so over-long ones are dropped before training
    starts, with their count in `skipped`.
    """

    def __init__(self, rows, tokenizer, prefix_ids, eot_id, max_label_tokens=448):
        self.rows = []
        self.targets = []
        self.skipped: dict[str, int] = {}
        for row in rows:
            target = encode_target(tokenizer, row["text"], prefix_ids, eot_id)
            if len(target) > max_label_tokens:
                self.skipped["target_too_long"] = self.skipped.get("target_too_long", 0) + 1
                continue
            self.rows.append(row)
            self.targets.append(target)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict | None:
        row = self.rows[index]
        try:
            audio = load_audio(row["audio_filepath"])
        except AudioError as error:
            return {"index": index, "error": error.reason}
        return {"index": index, "id": row["id"], "audio": audio, "target": self.targets[index],
                "group": row.get("group", "")}


def collate_utterances(items: list[dict], pad_token_id: int, prefix_length: int) -> dict:
    """Pad raw audio and token sequences; features are computed later on the device.

    decoder_input_ids = target[:-1], labels = target[1:] with the positions that only
    predict prefix tokens ignored; end-of-text stays a label.
    """
    good = [item for item in items if "audio" in item]
    errors = [item["error"] for item in items if "error" in item]
    if not good:
        return {"size": 0, "errors": errors}
    max_samples = max(len(item["audio"]) for item in good)
    audio = np.zeros((len(good), max_samples), dtype=np.float32)
    for row, item in enumerate(good):
        audio[row, : len(item["audio"])] = item["audio"]
    max_tokens = max(len(item["target"]) for item in good) - 1
    decoder_input_ids = torch.full((len(good), max_tokens), pad_token_id, dtype=torch.long)
    labels = torch.full((len(good), max_tokens), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(good):
        target = torch.tensor(item["target"], dtype=torch.long)
        decoder_input_ids[row, : len(target) - 1] = target[:-1]
        labels[row, : len(target) - 1] = target[1:]
        labels[row, : prefix_length - 1] = IGNORE_INDEX
    return {
        "size": len(good),
        "index": torch.tensor([item["index"] for item in good]),
        "ids": [item["id"] for item in good],
        "groups": [item["group"] for item in good],
        "audio": torch.from_numpy(audio),
        "num_samples": torch.tensor([len(item["audio"]) for item in good]),
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
        "errors": errors,
    }
