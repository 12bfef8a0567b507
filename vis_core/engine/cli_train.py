"""``vis train``: train a registered method from one section of a YAML config.

    vis train --config params.yaml --section train --set model.num_queries=10 --set solver.max_iter=200
    torchrun --nproc_per_node 8 -m vis_core.cli train --config params.yaml --section train --resume

``--resume`` continues from ``<output_dir>/last.pth`` when it exists (and starts fresh otherwise), so a long
job can simply be re-launched with the same command after an interruption.
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML file (e.g. a reproduction's params.yaml)")
    parser.add_argument("--section", default=None, help="dotted key of the training section, e.g. train")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key (YAML value), e.g. --set solver.lr=2e-4; repeatable",
    )
    parser.add_argument("--resume", action="store_true", help="resume from <output_dir>/last.pth if present")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def main(args: argparse.Namespace) -> int:
    import yaml

    from vis_core.engine import distributed as du
    from vis_core.engine.config import ConfigError, load_config, to_dict
    from vis_core.io.weights import UnsafeCheckpointError

    try:
        cfg = load_config(args.config, args.section, args.overrides)
    except ConfigError as exc:
        print(f"vis train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from vis_core.engine.trainer import train

    try:
        where = f"{args.config} [{args.section}]" if args.section else str(args.config)
        train(cfg, resume=args.resume, where=where)
    except (ConfigError, KeyError, FileNotFoundError, UnsafeCheckpointError) as exc:
        print(f"vis train: {exc}", file=sys.stderr)
        return 2
    finally:
        du.cleanup()
    return 0
