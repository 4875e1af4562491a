"""The seed's command line: every flag honoured or rejected, clear errors."""

from __future__ import annotations

import pytest

from whisper_moe.cli import SEED_FLAGS, build_parser, main, params_from_args


def empty_params(folder):
    """A parameter file that sets nothing: the built-in defaults."""
    path = folder / "empty.yaml"
    path.write_text("{}\n")
    return path


def test_skip_pretraining_without_num_experts_stops_with_the_guides_message(tmp_path, capsys, caplog):
    code = main(["pipeline", "--mode", "quick", "--skip-pretraining", "--params", str(empty_params(tmp_path)),
                 "--output-dir", str(tmp_path / "run")])
    assert code == 2
    assert "num_experts must be specified" in caplog.text
    assert "--num-experts" in caplog.text
    assert not (tmp_path / "run" / "data").exists()  # failed before any work


def test_seed_flags_map_onto_params(tmp_path):
    args = build_parser().parse_args([
        "pipeline", "--params", str(empty_params(tmp_path)), "--mode", "full", "--seed", "7",
        "--num-experts", "8", "--asr-batch-size", "2", "--gradient-accumulation-steps", "8", "--fp16",
        "--num-workers", "4", "--eval-every-n-epochs", "2", "--save-every-n-epochs", "5",
        "--data-percent", "10", "--device", "cpu", "--clustering-algorithm", "hdbscan",
        "--min-cluster-size", "9", "--no-plot", "--skip-pretraining",
    ])
    params = params_from_args(args)
    assert params["mode"] == "full" and params["seed"] == 7
    assert params["model"]["num_experts"] == 8
    assert params["train"]["batch_size"] == 2
    assert params["train"]["gradient_accumulation_steps"] == 8
    assert params["train"]["fp16"] is True
    assert params["train"]["num_workers"] == 4
    assert params["train"]["eval_every_n_epochs"] == 2
    assert params["train"]["save_every_n_epochs"] == 5
    assert params["data"]["data_percent"] == 10
    assert params["train"]["device"] == "cpu"
    assert params["cluster"]["algorithm"] == "hdbscan"
    assert params["cluster"]["min_cluster_size"] == 9
    assert params["cluster"]["plot"] is False


def test_every_seed_flag_reaches_an_existing_parameter():
    import copy

    from whisper_moe.config import DEFAULT_PARAMS, set_dotted

    params = copy.deepcopy(DEFAULT_PARAMS)
    for key in SEED_FLAGS.values():
        set_dotted(params, key, None)  # raises KeyError for a key that does not exist


def test_unknown_override_is_rejected(tmp_path, caplog):
    code = main(["train", "--params", str(empty_params(tmp_path)), "-S", "train.no_such_key=1",
                 "--train-manifest", "x", "--dev-manifest", "y", "--out", str(tmp_path)])
    assert code == 2
    assert "unknown parameter" in caplog.text


def test_unknown_flag_is_rejected():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pipeline", "--no-such-flag"])


def test_params_file_overrides_defaults_and_flags_override_file(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.5\n  epochs: 9\n")
    args = build_parser().parse_args(["train", "--params", str(tmp_path / "params.yaml"),
                                      "--epochs", "3", "--train-manifest", "a", "--dev-manifest", "b",
                                      "--out", "c"])
    params = params_from_args(args)
    assert params["train"]["lr"] == 0.5 and params["train"]["epochs"] == 3


def test_cuda_requested_without_gpu_is_a_clear_error(tmp_path, caplog, tiny_corpus):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = main(["train", "--params", str(empty_params(tmp_path)), "--device", "cuda",
                 "--num-experts", "2", "--train-manifest", str(tiny_corpus / "train.jsonl"),
                 "--dev-manifest", str(tiny_corpus / "dev.jsonl"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no CUDA GPU" in caplog.text


def test_missing_base_model_offline_is_a_clear_error(tmp_path, caplog, tiny_corpus):
    code = main(["train", "--params", str(empty_params(tmp_path)), "--device", "cpu",
                 "--num-experts", "2", "--base-model", str(tmp_path / "no-model-here"),
                 "--train-manifest", str(tiny_corpus / "train.jsonl"),
                 "--dev-manifest", str(tiny_corpus / "dev.jsonl"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "BaseModelNotFound" in caplog.text


def test_a_missing_params_file_is_an_error_not_the_defaults(tmp_path, caplog):
    code = main(["train", "--params", str(tmp_path / "missing.yaml"), "--num-experts", "2",
                 "--train-manifest", "a", "--dev-manifest", "b", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "missing.yaml: no such parameter file" in caplog.text


def test_epochs_flag_is_honoured_in_quick_mode(tmp_path):
    args = build_parser().parse_args(["pipeline", "--params", str(empty_params(tmp_path)),
                                      "--mode", "quick", "--epochs", "5"])
    params = params_from_args(args)
    assert params["quick"]["epochs"] == 5 and params["train"]["epochs"] == 5
