"""The evaluation subcommands of ``deepnmf``: each one line of parsing into
:mod:`deepnmf_jax.evaluation.commands` (or :mod:`deepnmf_jax.evaluation.attack`).

    deepnmf evaluate --workdir RUN_OR_SWEEP [--checkpoint best|latest|STEP] [--split test|validation]
    deepnmf noise --workdir RUN_OR_SWEEP [--workdir ... --out DIR] [--corruptions cifar10c]
    deepnmf attack --workdir RUN [--eps 1/255,8/255] [--steps 20] [--limit 500] [--method apgd]
    deepnmf export --workdir RUN [--seed-index 0] [--out DIR] [--onnx]
    deepnmf population-stats --workdir RUN [--checkpoint best]
    deepnmf import-reference --state-dict model.npz --model cnmf_1x1 --workdir RUN
    deepnmf import-pretrained --name cnmf_1x1_cifar10_fast --workdir RUN

Results go to ``RUN/eval/``. Every run is read with its own config; ``--data-dir`` and ``--source``
say where the dataset is on this machine. BatchNorm uses the checkpoint's population statistics
where it has them (``--batch-stats``: each batch's, the reference's evaluation).
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Callable

from deepnmf_jax.cli import _common

SUBCOMMANDS = {
    "evaluate": "accuracy, confusion and calibration of a run (or of every run of a sweep)",
    "noise": "the robustness suite: the reference's noises and CIFAR-10-C's corruptions",
    "attack": "adversarial robustness: L-infinity PGD through the true gradient",
    "export": "one seed's inference as a jax.export file (and ONNX)",
    "population-stats": "BatchNorm population statistics of a checkpoint",
    "import-reference": "a PyTorch reference state_dict (.npz) as a run folder",
    "import-pretrained": "a released model as a run folder",
}


def _runs(parser: argparse.ArgumentParser, several: bool = False) -> None:
    parser.add_argument(
        "--workdir",
        required=True,
        action="append" if several else "store",
        help="a training run or a sweep's folder"
        + ("; repeat it to pool seeds" if several else ""),
    )
    parser.add_argument("--checkpoint", default="best", help="best (default), latest or a step")
    parser.add_argument(
        "--eval-batch-size", type=int, default=0, help="the evaluation batch (default: the run's)"
    )
    parser.add_argument("--data-dir", help="where the dataset is on this machine")
    parser.add_argument("--source", help="data source on this machine (folder, sample, ...)")
    parser.add_argument("--test-limit", type=int, help="only the first N test images")
    parser.add_argument(
        "--batch-stats",
        action="store_true",
        help="BatchNorm with each batch's statistics (the reference's evaluation)",
    )


def _selection(args):
    from deepnmf_jax.evaluation.commands import Selection

    workdirs = args.workdir if isinstance(args.workdir, list) else [args.workdir]
    return Selection(
        workdirs=tuple(pathlib.Path(w) for w in workdirs),
        checkpoint=args.checkpoint,
        eval_batch_size=args.eval_batch_size,
        data_dir=args.data_dir,
        source=args.source,
        test_limit=args.test_limit,
        batch_stats=args.batch_stats,
    )


def _parser(name: str) -> _common.Parser:
    parser = _common.Parser(prog=f"deepnmf {name}", description=SUBCOMMANDS[name])
    if name == "evaluate":
        _runs(parser)
        parser.add_argument("--split", default="test", choices=("test", "validation"))
    elif name == "noise":
        _runs(parser, several=True)
        parser.add_argument(
            "--corruptions",
            default="all",
            help="names separated by commas, or reference (the reference's four), cifar10c "
            "(CIFAR-10-C's 15) or all",
        )
        parser.add_argument("--levels", help="eta values of the reference corruptions, e.g. 0,0.5")
        parser.add_argument("--severities", help="CIFAR-10-C severities, e.g. 1,3,5 (default 1-5)")
        parser.add_argument("--cifar10c-dir", help="a folder of the official CIFAR-10-C .npy files")
        parser.add_argument("--limit", type=int, default=0, help="only the first N test images")
        parser.add_argument("--seed", type=int, default=0, help="of every noise draw")
        parser.add_argument("--out", help="folder of the pooled results (several --workdir)")
        parser.add_argument("--recompute", action="store_true", help="ignore earlier results")
    elif name == "attack":
        _runs(parser)
        parser.add_argument("--eps", default="1/255,2/255,4/255,8/255", help="radii, e.g. 8/255")
        parser.add_argument("--steps", type=int, default=20, help="PGD (or APGD) steps")
        parser.add_argument(
            "--method",
            default="pgd",
            help="pgd (step eps/4; eval/attack.json) or apgd (APGD-CE, AutoAttack's step-size-free "
            "PGD; eval/attack_apgd.json)",
        )
        parser.add_argument("--limit", type=int, default=500, help="test images attacked")
        parser.add_argument("--seed", type=int, default=0, help="of the random start")
        parser.add_argument(
            "--gradient",
            default="unrolled,approximate",
            help="unrolled (the true gradient), approximate (the paper's), transfer (made on "
            "--source-run; added whenever --source-run is given)",
        )
        parser.add_argument("--source-run", help="the run (a CNN twin) the transfer attack uses")
    elif name == "export":
        _runs(parser)
        parser.add_argument("--seed-index", type=int, default=0, help="which seed (0-based)")
        parser.add_argument("--out", help="default: RUN/eval/export")
        parser.add_argument("--onnx", action="store_true", help="also ONNX (jax2onnx)")
    elif name == "population-stats":
        _runs(parser)
    elif name == "import-reference":
        parser.add_argument("--state-dict", required=True, help=".npz of a reference state_dict")
        parser.add_argument(
            "--model", required=True, choices=("cnn", "cnmf", "cnn_1x1", "cnmf_1x1")
        )
        parser.add_argument("--workdir", required=True, help="the run folder to create")
        parser.add_argument("--dataset", default="cifar10")
    else:
        parser.add_argument(
            "--name", required=True, help="a released model (deepnmf_jax.pretrained)"
        )
        parser.add_argument("--workdir", required=True, help="the run folder to create")
    _common.add_verbose(parser)
    return parser


def command(name: str) -> Callable[[list[str]], int]:
    """The ``main(argv)`` of one evaluation subcommand."""

    def main(argv: list[str]) -> int:
        args = _parser(name).parse_args(argv)
        from deepnmf_jax.evaluation import commands

        if name == "evaluate":
            commands.evaluate(_selection(args), args.split)
        elif name == "noise":
            from deepnmf_jax.evaluation import noise

            options = noise.SuiteOptions(
                names=tuple(noise.corruption_names(args.corruptions)),
                levels=noise.numbers_from_text(args.levels, "--levels"),
                severities=noise.numbers_from_text(args.severities, "--severities", int),
                limit=args.limit,
                seed=args.seed,
                cifar10c_dir=args.cifar10c_dir,
            )
            out = pathlib.Path(args.out) if args.out else None
            noise.command(_selection(args), options, out, args.recompute)
        elif name == "attack":
            from deepnmf_jax.evaluation import attack

            attack.command(_selection(args), args)  # eps, steps, limit, seed, gradient, source
        elif name == "export":
            commands.export(
                _selection(args),
                args.seed_index,
                pathlib.Path(args.out) if args.out else None,
                args.onnx,
            )
        elif name == "population-stats":
            commands.population(_selection(args))
        elif name == "import-reference":
            commands.import_reference(
                pathlib.Path(args.state_dict), args.model, pathlib.Path(args.workdir), args.dataset
            )
        else:
            commands.import_pretrained(args.name, pathlib.Path(args.workdir))
        return 0

    return main
