"""Each exported expert is a PEFT adapter that reproduces that expert's outputs."""

from __future__ import annotations

import torch

from whisper_moe.model.export import write_peft_adapters
from whisper_moe.model.io import load_moe, save_moe
from whisper_moe.model.moe import MoEConfig, WhisperMoE


def test_exported_expert_loads_in_peft_and_matches(tmp_path, tiny_base_dir):
    from peft import PeftModel

    from whisper_moe.model.base import load_base_model

    base, _ = load_base_model(str(tiny_base_dir))
    torch.manual_seed(0)
    model = WhisperMoE(base, MoEConfig(base_model=str(tiny_base_dir), num_experts=3, rank=4,
                                       alpha=8, dropout=0.0, gate_hidden=16))
    for _, layer in model.expert_layers():
        layer.lora_B.data.normal_(0, 0.05)
    model.eval()
    save_moe(model, tmp_path / "ckpt")
    reloaded, _ = load_moe(tmp_path / "ckpt")
    reloaded.eval()
    folders = write_peft_adapters(reloaded, tmp_path / "peft")
    assert [f.name for f in folders] == ["expert_0", "expert_1", "expert_2"]

    features = torch.randn(2, 80, 3000)
    ids = torch.randint(0, 1000, (2, 5))
    for expert in (0, 2):
        one_hot = torch.nn.functional.one_hot(torch.tensor([expert] * 2), 3).float()
        ours = reloaded.decode_logits(features, ids, one_hot)
        plain, _ = load_base_model(str(tiny_base_dir))
        peft_model = PeftModel.from_pretrained(plain, folders[expert]).eval()
        theirs = peft_model(input_features=features, decoder_input_ids=ids).logits
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # The experts really differ, so the comparison above could fail.
    assert not torch.allclose(
        reloaded.decode_logits(features, ids, torch.eye(3)[[0, 0]]),
        reloaded.decode_logits(features, ids, torch.eye(3)[[2, 2]]))
