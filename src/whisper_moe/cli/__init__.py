"""`whisper-moe`: one subcommand per stage, the seed-compatible `pipeline`, and tools.

Every subcommand that computes reads `--params` (params.yaml, the one configuration)
and applies `-S key=value` overrides; flags named after the seed's map onto the same
keys. Each subcommand module registers its parsers with a `handler`; `main` runs it and
turns the failures users can fix (`whisper_moe.errors`) into one line and an exit code.
"""

from __future__ import annotations

import argparse
import logging

from whisper_moe.cli import commands, kfp, pretraining
from whisper_moe.cli.params import SEED_FLAGS, add_common, params_from_args

__all__ = ["SEED_FLAGS", "add_common", "build_parser", "main", "params_from_args"]

log = logging.getLogger("whisper_moe")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisper-moe", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True)
    commands.add_subcommands(subcommands)
    pretraining.add_subcommands(subcommands)
    kfp.add_subcommands(subcommands)
    return parser


def output_lock(args):
    """The lock on the subcommand's output folder (--out); one per run, rank 0 under torchrun.

    `pipeline` takes its own, once its output folder is known.
    """
    import contextlib
    import os

    from whisper_moe.runlock import output_folder_lock

    folder = getattr(args, "out", None)
    is_folder_output = args.command not in ("export-peft", "export-ct2")  # swapped whole
    if folder is None or not is_folder_output or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return output_folder_lock(folder)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from whisper_moe.errors import explain
    from whisper_moe.training.runtime import setup_logging

    setup_logging(getattr(args, "log_file", None))
    try:
        with output_lock(args):
            return args.handler(args) or 0
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as error:
        message, code = explain(error)
        if code is None:
            raise
        log.error("%s", message)
        return code

