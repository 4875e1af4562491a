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
    assert "model.num_experts must be specified" in caplog.text
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
    assert params["runtime"]["precision"] == "mixed"
    assert params["runtime"]["num_workers"] == 4
    assert params["train"]["eval_every_n_epochs"] == 2
    assert params["train"]["save_every_n_epochs"] == 5
    assert params["data"]["data_percent"] == 10
    assert params["runtime"]["device"] == "cpu"
    assert params["cluster"]["algorithm"] == "hdbscan"
    assert params["cluster"]["min_cluster_size"] == 9
    assert params["cluster"]["plot"] is False


def test_every_seed_flag_reaches_an_existing_parameter():
    from whisper_moe.config import DEFAULT_PARAMS, get_dotted

    for key in SEED_FLAGS.values():
        get_dotted(DEFAULT_PARAMS, key)  # raises ConfigError for a key that does not exist


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


@pytest.mark.parametrize("argv, message", [
    (["--data-percent", "150"], r"--data-percent: data.data_percent=150.0: expected a value in (0, 100]"),
    (["--asr-batch-size", "0"], r"--asr-batch-size: train.batch_size=0: expected a value >= 1"),
    (["-S", "train.lr=abc"], r"-S: train.lr='abc': expected a number"),
    (["-S", "train=5"], r"train is a section"),
    (["--precision", "bf16", "--fp16"], r"--fp16 means --precision mixed"),
])
def test_bad_values_stop_the_run_before_any_work(tmp_path, caplog, argv, message):
    code = main(["pipeline", "--params", str(empty_params(tmp_path)), "--skip-pretraining",
                 "--num-experts", "2", "--output-dir", str(tmp_path / "run"), *argv])
    assert code == 2
    assert message in caplog.text
    assert not (tmp_path / "run").exists()


def test_a_broken_params_file_is_one_line_naming_file_and_line(tmp_path, caplog):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.1\n   epochs: 2\n")
    code = main(["train", "--params", str(path), "--train-manifest", "a", "--dev-manifest", "b",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert f"{path}:3:" in caplog.text and "Traceback" not in caplog.text


def test_no_fp16_is_fp32(tmp_path):
    (tmp_path / "params.yaml").write_text("runtime:\n  precision: mixed\n")
    args = build_parser().parse_args(["evaluate", "--params", str(tmp_path / "params.yaml"),
                                      "--no-fp16", "--manifest", "m", "--out", "o"])
    assert params_from_args(args)["runtime"]["precision"] == "fp32"


RUNTIME_FLAGS = {"--device", "--precision", "--fp16", "--num-workers"}


def offered_flags(command: str) -> set[str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return {o for a in subparsers.choices[command]._actions for o in a.option_strings}


@pytest.mark.parametrize("command, expected", [
    ("pipeline", RUNTIME_FLAGS), ("train", RUNTIME_FLAGS), ("evaluate", RUNTIME_FLAGS),
    ("embed", RUNTIME_FLAGS), ("pretrain-experts", RUNTIME_FLAGS),
    ("transcribe", {"--device", "--precision", "--fp16"}), ("pretrain-gate", {"--device"}),
    ("data", set()), ("make-demo-data", set()), ("validate-data", set()), ("cluster", set()),
    ("compare", set()),
])
def test_runtime_flags_are_offered_only_where_they_act(command, expected):
    assert offered_flags(command) & RUNTIME_FLAGS == expected
