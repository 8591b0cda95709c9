"""``python -m deepnmf_jax.evaluate`` (or ``deepnmf-evaluate``): evaluate, stress and export runs.

    deepnmf-evaluate --workdir RUN_OR_SWEEP [--checkpoint best|latest|STEP] [--split test|val]
        [--eval_batch_size N] [--data_dir DIR]
    deepnmf-evaluate noise --workdir RUN_OR_SWEEP [--workdir ... --out DIR] [--corruptions a,b]
        [--levels 0,0.25,0.5] [--limit N] [--seed 0] [--recompute]
    deepnmf-evaluate export --workdir RUN [--seed_index 0] [--out DIR] [--onnx]
    deepnmf-evaluate import-reference --state_dict model.npz --model cnmf_1x1 --workdir RUN
    deepnmf-evaluate import-pretrained --name cnmf_1x1_cifar10_fast --workdir RUN

Results go to ``RUN/eval/`` (``metrics.json``, ``confusion.png``, ``noise.json``, ``noise.png``,
``export/``); for a sweep's folder each variant is evaluated, and ``noise`` pools the seeds of each
variant (from one or several folders) into ``DIR/noise.json``, ``noise.md`` (a table) and
``noise.png`` (one line per variant with its seed band). Errors a user can cause are one ``error: ...`` line and exit status 1,
with nothing written.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from deepnmf_jax.errors import ConfigError, UserError

COMMANDS = ("noise", "export", "import-reference", "import-pretrained")


def _common(parser: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        parser.add_argument(
            "--workdir",
            required=True,
            action="append",
            help="a training run, or a sweep's folder; repeat it to pool seeds from several",
        )
    else:
        parser.add_argument("--workdir", required=True, help="a training run, or a sweep's folder")
    parser.add_argument("--checkpoint", default="best", help="best (default), latest or a step")
    parser.add_argument(
        "--eval_batch_size",
        type=int,
        default=0,
        help="BatchNorm's batch in evaluation (default: the run's, 50)",
    )
    parser.add_argument("--data_dir", help="where the dataset is on this machine")
    parser.add_argument("--source", help="data source on this machine (folder, download, ...)")
    parser.add_argument("--test_limit", type=int, help="only the first N test images")


def _parser(command: str | None) -> argparse.ArgumentParser:
    prog = "deepnmf-evaluate" + (f" {command}" if command else "")
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    if command not in ("import-reference", "import-pretrained"):
        _common(parser, several=command == "noise")
    if command is None:
        parser.add_argument("--split", default="test", choices=("test", "val"))
    elif command == "noise":
        parser.add_argument(
            "--corruptions",
            default="all",
            help="comma-separated names, 'reference', 'standard' or 'all'",
        )
        parser.add_argument(
            "--levels", help="eta values of the reference corruptions, e.g. 0,0.25,0.5"
        )
        parser.add_argument("--limit", type=int, default=0, help="only the first N test images")
        parser.add_argument("--seed", type=int, default=0, help="of every noise draw")
        parser.add_argument(
            "--out", help="folder of the pooled noise.json/.md/.png (default: the one --workdir)"
        )
        parser.add_argument(
            "--recompute",
            action="store_true",
            help="run the suite even where a run's eval/noise.json was asked the same",
        )
    elif command == "export":
        parser.add_argument("--seed_index", type=int, default=0, help="which seed (0-based)")
        parser.add_argument("--out", help="default: RUN/eval/export")
        parser.add_argument("--onnx", action="store_true", help="also try ONNX (jax2onnx)")
    elif command == "import-pretrained":
        parser.add_argument(
            "--name", required=True, help="a released model (pretrained.available())"
        )
        parser.add_argument("--workdir", required=True, help="the run folder to create")
    else:
        parser.add_argument("--state_dict", required=True, help=".npz of a reference state_dict()")
        parser.add_argument(
            "--model", required=True, choices=("cnn", "cnmf", "cnn_1x1", "cnmf_1x1")
        )
        parser.add_argument("--workdir", required=True, help="the run folder to create")
        parser.add_argument("--dataset", default="cifar10")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = _parser(command).parse_args(argv[1:] if command else argv)
    try:
        from deepnmf_jax.evaluate import commands

        if command is None:
            commands.evaluate(args)
        elif command == "noise":
            commands.noise(args)
        elif command == "export":
            commands.export(args)
        elif command == "import-pretrained":
            commands.import_pretrained(args)
        else:
            commands.import_reference(args)
        return 0
    except UserError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1


def run_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    """The runs in ``folder``: itself, or a sweep's variants (those with a checkpoint)."""
    if (folder / "config.json").is_file():
        return [folder]
    plan = folder / "sweep.json"
    if plan.is_file():
        names = [v["name"] for v in json.loads(plan.read_text())["variants"]]
        runs = [folder / n for n in names if (folder / n / "config.json").is_file()]
        if runs:
            return runs
        raise ConfigError(f"no variant of the sweep in {folder} has been trained yet")
    if not folder.exists():
        raise ConfigError(f"--workdir {folder} does not exist")
    raise ConfigError(f"{folder} is neither a training run (config.json) nor a sweep (sweep.json)")
