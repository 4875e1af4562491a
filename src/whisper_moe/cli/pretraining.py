"""The pretrained-MoE subcommands and the run comparison.

embed -> cluster -> pretrain-gate -> pretrain-experts prepare the gate and experts
that `whisper-moe train --init <pretrain-experts out>/checkpoint` starts from;
`compare` tabulates finished runs.
"""

from __future__ import annotations

from pathlib import Path

from whisper_moe.cli.params import (
    add_clustering_flags,
    add_common,
    add_runtime_flags,
    params_from_args,
)


def add_subcommands(commands) -> None:
    p = commands.add_parser("embed", help="pooled encoder embeddings of a stratified sample")
    add_common(p)
    add_runtime_flags(p)
    p.add_argument("--manifest", required=True, help="training manifest (JSONL)")
    p.add_argument("--out", required=True)
    p.add_argument("--embedding-percent", type=float, help="stratified share of the manifest to embed")
    p.add_argument("--mode", choices=["quick", "full"])
    p.add_argument("--data-percent", type=float)
    p.add_argument("--base-model", help="hub name, local directory, or 'demo' (tiny.en, offline)")
    p.add_argument("--resume", action="store_true", help="continue from the saved chunks")
    p.set_defaults(handler=cmd_embed)

    p = commands.add_parser("cluster", help="cluster the embeddings: the clusters become experts")
    add_common(p)
    add_clustering_flags(p)
    p.add_argument("--embeddings", required=True, help="output folder of `embed`")
    p.add_argument("--out", required=True)
    p.add_argument("--num-clusters", type=int,
                   help="fixed k, one cluster per expert: model.num_experts (default: by silhouette)")
    p.set_defaults(handler=cmd_cluster)

    p = commands.add_parser("pretrain-gate", help="train the gate on the soft cluster labels")
    add_common(p)
    add_runtime_flags(p, precision=False, workers=False)
    p.add_argument("--embeddings", required=True, help="output folder of `embed`")
    p.add_argument("--clusters", required=True, help="output folder of `cluster`")
    p.add_argument("--out", required=True)
    p.add_argument("--gating-batch-size", type=int)
    p.set_defaults(handler=cmd_pretrain_gate)

    p = commands.add_parser("pretrain-experts",
                            help="train each expert on the utterances the pretrained gate routes to it")
    add_common(p)
    add_runtime_flags(p)
    p.add_argument("--train-manifest", required=True)
    p.add_argument("--clusters", required=True, help="output folder of `cluster`")
    p.add_argument("--gate", required=True, help="output folder of `pretrain-gate`")
    p.add_argument("--out", required=True)
    p.add_argument("--expert-batch-size", type=int)
    p.add_argument("--mode", choices=["quick", "full"])
    p.add_argument("--data-percent", type=float)
    p.add_argument("--base-model", help="must be the base model the embeddings were made with")
    p.add_argument("--embeddings", help="output folder of `embed`: the utterances it holds are not "
                   "encoded again (when it pooled the same way)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(handler=cmd_pretrain_experts)

    p = commands.add_parser("compare", help="WER, time and parameters of finished runs side by side")
    add_common(p)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="`pipeline` output folders")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=cmd_compare)


def cmd_embed(args) -> int:
    from whisper_moe.stages import embed

    outputs = embed.run(params_from_args(args), args.manifest, args.out, resume=args.resume)
    print(f"{outputs['count']} embeddings (d={outputs['dim']}): {outputs['embeddings']}")
    return 0


def cmd_cluster(args) -> int:
    from whisper_moe.stages import cluster

    outputs = cluster.run(params_from_args(args), args.embeddings, args.out)
    print(f"{outputs['num_clusters']} clusters; report: {outputs['report']}")
    return 0


def cmd_pretrain_gate(args) -> int:
    from whisper_moe.stages import pretrain_gate

    outputs = pretrain_gate.run(params_from_args(args), args.embeddings, args.clusters, args.out)
    print(f"gate accuracy {outputs['accuracy']:.3f}; weights: {outputs['gate']}")
    return 0


def cmd_pretrain_experts(args) -> int:
    from whisper_moe.stages import pretrain_experts

    outputs = pretrain_experts.run(params_from_args(args), args.train_manifest, args.clusters,
                                   args.gate, args.out, resume=args.resume,
                                   embeddings_dir=args.embeddings)
    print(f"utterances per expert {outputs['utterances_per_expert']}; checkpoint: {outputs['checkpoint']}")
    print(f"joint training from it: whisper-moe train --init {outputs['checkpoint']} ...")
    return 0


def cmd_compare(args) -> int:
    from whisper_moe.stages import compare

    outputs = compare.run(params_from_args(args), args.run_dirs, args.out)
    print(Path(outputs["markdown"]).read_text())
    return 0
