"""The data, training, evaluation and inference subcommands, and the seed's `pipeline`."""

from __future__ import annotations

import sys
from pathlib import Path

from whisper_moe.cli.params import (
    add_clustering_flags,
    add_common,
    add_data_source,
    add_runtime_flags,
    add_training_flags,
    params_from_args,
)
from whisper_moe.config import set_dotted


def add_subcommands(commands) -> None:
    p = commands.add_parser("pipeline", help="the whole pipeline (seed-compatible flags)")
    add_common(p)
    add_runtime_flags(p)
    add_training_flags(p)
    add_data_source(p)
    add_clustering_flags(p)
    p.add_argument("--skip-pretraining", action="store_true",
                   help="regular MoE: gate and experts start random and train jointly")
    p.add_argument("--embedding-percent", type=float)
    p.add_argument("--gating-batch-size", type=int)
    p.add_argument("--expert-batch-size", type=int)
    p.add_argument("--output-dir", help="default: runs/<mode>")
    p.set_defaults(handler=cmd_pipeline)

    p = commands.add_parser("data", help="data stage: corpus -> validated train/dev/test manifests")
    add_common(p)
    add_data_source(p)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=cmd_data)

    p = commands.add_parser("make-demo-data", help="synthesise the demo corpus of speaker groups")
    add_common(p)
    p.add_argument("--out", default=None, help="default: data.dir from params")
    p.add_argument("--speakers-per-group", type=int)
    p.add_argument("--utterances-per-speaker", type=int)
    p.set_defaults(handler=cmd_make_demo_data)

    p = commands.add_parser("import-sap", help="Speech Accessibility Project layout -> manifests")
    p.add_argument("root")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=cmd_import_sap)

    p = commands.add_parser("import-ct2", help="CTranslate2/faster-whisper dir -> transformers dir")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(handler=cmd_import_ct2)

    p = commands.add_parser("validate-data", help="check a manifest: cleaned copy + data report")
    add_common(p)
    p.add_argument("manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--max-skip-fraction", type=float)
    p.add_argument("--root", help="audio paths may not escape this folder")
    p.set_defaults(handler=cmd_validate_data)

    p = commands.add_parser("train", help="joint training of gate and experts")
    add_common(p)
    add_runtime_flags(p)
    add_training_flags(p)
    p.add_argument("--train-manifest", required=True)
    p.add_argument("--dev-manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--init", help="checkpoint of pretrained gate and experts")
    p.add_argument("--embeddings", help="output folder of `embed`: its vectors are the gate inputs "
                   "of the training utterances it holds (when it pooled the same way)")
    p.set_defaults(handler=cmd_train)

    p = commands.add_parser("evaluate", help="WER/CER overall and per group, HTML report")
    add_common(p)
    add_runtime_flags(p)
    p.add_argument("--checkpoint")
    p.add_argument("--base-model")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=["quick", "full"])
    p.set_defaults(handler=cmd_evaluate)

    p = commands.add_parser("model-card", help="lineage.json and a model card (README.md) for an "
                                               "evaluated model folder")
    add_common(p)
    p.add_argument("--evaluation", required=True, help="the evaluate stage's folder (metrics.json)")
    p.add_argument("--out", required=True, help="the model folder to write them into")
    p.add_argument("--pipeline", choices=["pretrained", "regular"])
    p.add_argument("--run-id", help="what names the run (default: the evaluation folder's parent)")
    p.add_argument("--dvc-lock", help="dvc.lock that recorded the data folder (its DVC md5)")
    p.add_argument("--data", default="dvc_runs/data", help="the data folder (default dvc_runs/data)")
    p.set_defaults(handler=cmd_model_card)

    p = commands.add_parser("export-peft", help="write each expert as a PEFT LoRA adapter")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=cmd_export_peft)

    p = commands.add_parser("transcribe", help="transcribe audio files with a checkpoint")
    add_common(p)
    add_runtime_flags(p, workers=False)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint folder (--backend torch) or export-ct2 folder (--backend ct2)")
    p.add_argument("--backend", choices=["torch", "ct2"], default="torch",
                   help="ct2: CTranslate2 (faster-whisper's engine) on an export-ct2 folder")
    p.add_argument("audio", nargs="+")
    p.set_defaults(handler=cmd_transcribe)

    p = commands.add_parser("export-ct2", help="each expert merged into the base, as CTranslate2 "
                                               "models faster-whisper loads, plus the gate")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--quantization", choices=["int8", "int8_float16", "int8_float32", "float16",
                                              "bfloat16", "float32"],
                   help="CTranslate2 weight type (default: the model's)")
    p.set_defaults(handler=cmd_export_ct2)


def cmd_pipeline(args) -> int:
    from whisper_moe.runlock import output_folder_lock
    from whisper_moe.stages import pipeline

    params = params_from_args(args)
    output_dir = Path(args.output_dir or f"runs/{params['mode']}")
    with output_folder_lock(output_dir):
        pipeline.run(params, output_dir, skip_pretraining=args.skip_pretraining, resume=args.resume)
    return 0


def cmd_data(args) -> int:
    from whisper_moe.stages import data as data_stage

    params = params_from_args(args)
    outputs = data_stage.run(params, args.out)
    print(f"validated manifests and data report in {args.out}: {outputs}")
    return 0


def cmd_make_demo_data(args) -> int:
    from whisper_moe.data.demo import make_demo_corpus

    params = params_from_args(args)
    for flag in ("speakers_per_group", "utterances_per_speaker"):
        if getattr(args, flag) is not None:
            set_dotted(params, f"data.demo.{flag}", getattr(args, flag),
                       source="--" + flag.replace("_", "-"))
    demo = params["data"]["demo"]
    out = Path(args.out or params["data"]["dir"])
    paths = make_demo_corpus(
        out, groups=demo["groups"], speakers_per_group=demo["speakers_per_group"],
        fractions=demo["split"], eval_utterances_per_speaker=demo["eval_utterances_per_speaker"],
        utterances_per_speaker=demo["utterances_per_speaker"], seed=params["seed"],
    )
    print(f"demo corpus written to {out}: {paths}")
    return 0


def cmd_import_sap(args) -> int:
    from whisper_moe.data.sap import import_sap

    print(import_sap(args.root, args.out))
    return 0


def cmd_import_ct2(args) -> int:
    from whisper_moe.model.ct2_import import import_ct2_whisper

    print(f"imported to {import_ct2_whisper(args.src, args.dst)}")
    return 0


def cmd_validate_data(args) -> int:
    from whisper_moe.stages import data as data_stage

    params = params_from_args(args)
    report = data_stage.validate_one(params, args.manifest, Path(args.out), root=args.root)
    print(f"kept {report['kept']}, skipped {report['skipped']}; cleaned manifest and report in {args.out}")
    return 0


def cmd_train(args) -> int:
    from whisper_moe.stages import train
    from whisper_moe.training.runtime import init_distributed

    params = params_from_args(args)
    rank, world_size = init_distributed(params)
    metrics = train.run(params, args.train_manifest, args.dev_manifest, args.out, init_dir=args.init,
                        resume=args.resume, rank=rank, world_size=world_size,
                        embeddings_dir=args.embeddings)
    if rank == 0:
        print(f"checkpoint: {metrics['checkpoint']}")
    return 0


def cmd_evaluate(args) -> int:
    from whisper_moe.stages import evaluate

    params = params_from_args(args)
    metrics = evaluate.run(params, checkpoint_dir=args.checkpoint, test_manifest=args.manifest,
                           out_dir=args.out, base_model=args.base_model)
    for system in ("base", "moe", "oracle"):
        if system in metrics:
            values = metrics[system]
            line = f"{system:>6}: WER {values['wer']:.4f}  CER {values['cer']:.4f}"
            if "wer_whisper_norm" in values:
                line += f"  WER ({metrics['whisper_normalizer']}) {values['wer_whisper_norm']:.4f}"
            if "sap_cer" in values:
                line += f"  SAP CER {values['sap_cer']:.4f}"
            print(line)
    for name, extra in metrics.get("extra_test_sets", {}).items():
        print(f"{name}: " + "  ".join(f"{system} WER {extra[system]['wer']:.4f}"
                                      for system in ("base", "moe") if system in extra))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_model_card(args) -> int:
    from whisper_moe import artifacts, lineage, model_card

    params = params_from_args(args)
    evaluation = artifacts.load_evaluation_metrics(args.evaluation)
    source = params["data"]["source"]
    data = (lineage.dvc_stage_data(args.dvc_lock, args.data, source) if args.dvc_lock
            else lineage.manifests_data(args.data, source))
    made = lineage.build(params, data, run_id=args.run_id or Path(args.evaluation).resolve().parent.name,
                         pipeline=args.pipeline, base_model=evaluation.get("base_model"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"wrote {lineage.write(args.out, made)} and {model_card.write(args.out, evaluation, made)}")
    return 0


def cmd_export_peft(args) -> int:
    from whisper_moe.model.export import export_peft_adapters

    for path in export_peft_adapters(args.checkpoint, args.out):
        print(path)
    return 0


def cmd_transcribe(args) -> int:
    from whisper_moe.stages.transcribe import transcribe_files

    params = params_from_args(args)
    failed = 0
    for result in transcribe_files(params, args.checkpoint, args.audio, backend=args.backend):
        if result.error:
            failed += 1
            print(f"{result.path}\tERROR\t{result.error}", file=sys.stderr)
            continue
        experts = sorted(set(result.experts))
        label = f"expert {experts[0]}" if len(experts) == 1 else f"experts {','.join(map(str, result.experts))}"
        print(f"{result.path}\t[{label}]\t{result.text}")
    if failed:
        print(f"{failed} of {len(args.audio)} files could not be transcribed (see ERROR lines)",
              file=sys.stderr)
    return 1 if failed else 0


def cmd_export_ct2(args) -> int:
    from whisper_moe.model.ct2_export import export_ct2

    out = export_ct2(args.checkpoint, args.out, quantization=args.quantization)
    print(f"CTranslate2 export in {out}: base/, expert_*/ (faster-whisper loads each), gate")
    print(f"routed transcription: whisper-moe transcribe --backend ct2 --checkpoint {out} AUDIO...")
    return 0
