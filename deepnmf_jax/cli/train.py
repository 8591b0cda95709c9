"""``deepnmf train``: trains the config's model in ``--workdir`` (rerun to resume).

    deepnmf train --config cifar10:sample --workdir runs/sample
    deepnmf train --config configs/cifar10.py:fast --workdir runs/fast --config.data.data_dir=DIR

Exit status: 0 done, 1 an error a user can fix (one ``error:`` line), 130 stopped by Ctrl-C or
SIGTERM (after a checkpoint, once training has started).
"""

from __future__ import annotations

import os
import pathlib
import sys

from deepnmf_jax.cli import _common


def _parser() -> _common.Parser:
    parser = _common.Parser(prog="deepnmf train", description=(__doc__ or "").split("\n")[0])
    _common.add_config(parser)
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics and results")
    parser.add_argument(
        "--restart-from",
        choices=("best", "scratch"),
        help="a run folder that lost its checkpoints/: go on from best/, or start over",
    )
    _common.add_verbose(parser)
    return parser


def main(argv: list[str]) -> int:
    rest, overrides = _common.split_overrides(argv)
    args = _parser().parse_args(rest)
    config = _common.load_train_config(args.config, overrides)
    from deepnmf_jax.training import train_and_evaluate

    results = train_and_evaluate(
        config, args.workdir, restart_from=args.restart_from, title=_title(args.config, config)
    )
    if results is not None:
        print(f"results: {os.path.join(args.workdir, 'results.json')}", file=sys.stderr)
    return 0


def _title(spec: str, config) -> str:
    """``cnmf_1x1, cifar10:sample``: the model and the config it came from."""
    path, colon, arg = spec.partition(":")
    name = pathlib.PurePath(path).stem if path.endswith(".py") else path
    return f"{config.model.name}, {name}{colon}{arg}"
