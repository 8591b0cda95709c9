"""``deepnmf`` (also ``python -m deepnmf_jax``): train, run sweeps, evaluate, stress, export.

    deepnmf train --config cifar10:sample --workdir runs/sample
    deepnmf sweep run --config sweeps/fig5 --workdir runs/fig5 --config.data.data_dir=DIR
    deepnmf evaluate --workdir runs/sample

``deepnmf --help`` lists the subcommands, ``deepnmf SUBCOMMAND --help`` their flags.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

from deepnmf_jax import _malloc
from deepnmf_jax.cli import _common, evaluate, sweep, train

SUBCOMMANDS = {
    "train": (train.main, "train a model (resumes in the same --workdir)"),
    "sweep": (sweep.main, "run, watch and report a sweep: sweep run|status|report"),
    **{name: (evaluate.command(name), text) for name, text in evaluate.SUBCOMMANDS.items()},
}


def _parser() -> _common.Parser:
    lines = "\n".join(f"  {name:<18} {text}" for name, (_, text) in SUBCOMMANDS.items())
    parser = _common.Parser(
        prog="deepnmf",
        description="Deep NMF networks in JAX: train, sweep, evaluate, stress, export.",
        epilog=f"subcommands:\n{lines}\n\n'deepnmf SUBCOMMAND --help' lists a subcommand's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("subcommand", choices=list(SUBCOMMANDS), metavar="SUBCOMMAND")
    _common.add_verbose(parser)
    return parser


def dispatch(argv: list[str], entry_point: bool = False) -> int | None:
    """Runs the subcommand ``argv`` names. ``entry_point``: ``argv`` is this process's own command
    line, which may be re-executed on tcmalloc first (:mod:`deepnmf_jax._malloc`)."""
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0].startswith("-") and argv[0] != "--verbose":
        parser.error(f"the first argument must be a subcommand, got {argv[0]}")
    rest = [a for a in argv if a != "--verbose"]
    name = rest[0] if rest else ""
    parser.parse_args([name])  # one line (with "did you mean") for an unknown subcommand
    if entry_point:
        _malloc.exec_on_tcmalloc()
    return SUBCOMMANDS[name][0](rest[1:])


def main(argv: Sequence[str] | None = None, entry_point: bool | None = None) -> int:
    """The command line on ``argv`` (None: ``sys.argv``). ``entry_point`` (default: ``argv`` is
    None): the arguments are this process's own command line (:func:`dispatch`)."""
    entry_point = argv is None if entry_point is None else entry_point
    return _common.run(functools.partial(dispatch, entry_point=entry_point), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
