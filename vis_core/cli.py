"""The ``vis`` command line.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and ``main(args) -> int``.
Modules are imported lazily so that ``vis eval`` does not pay for importing torch models.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("vis_core.data.cli", "generate, validate and look at VIS datasets"),
    "eval": ("vis_core.eval.cli", "evaluate a YouTube-VIS/OVIS results json against ground truth"),
    "train": ("vis_core.engine.cli_train", "train a segmenter / VIS method from a YAML config"),
    "infer": ("vis_core.engine.cli_infer", "online / clip / offline inference, writes a YouTube-VIS results json"),
    "bench": ("vis_core.engine.bench", "inference latency / peak memory vs video length (JSON)"),
    "ensemble": ("vis_core.tracking.cli_ensemble", "fuse several results json files into one"),
    "stage": ("vis_core.engine.stages", "run one step of a reproduction's DVC pipeline from its params.yaml"),
    "report": ("vis_core.report.cli", "build a reproduction's tables and report"),
    "check-regression": ("vis_core.report.regression", "compare fresh metrics to committed ones"),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="vis", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        # Only import the module of the subcommand being run (keeps `vis --help` and `vis eval` fast).
        if argv and argv[0] == name:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_main=module.main)
            chosen = module
    return parser, chosen


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "_main", None) is None:
        parser.print_help()
        return 2
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
