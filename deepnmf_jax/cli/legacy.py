"""The 0.1 entry points (``deepnmf-sweep``, ``deepnmf-evaluate``, ``python -m deepnmf_jax.sweep`` and
``... .evaluate``), kept for one minor version: each prints one deprecation line, translates its old
flags into the one dialect of ``deepnmf`` and runs that (see CHANGELOG.md, 0.2.0)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from deepnmf_jax._deprecated import old_command
from deepnmf_jax.cli import main as deepnmf_main

_EVALUATE_SUBCOMMANDS = ("noise", "export", "import-reference", "import-pretrained")


def _kebab(arg: str) -> str:
    """``--data_dir=x`` -> ``--data-dir=x``; ``--slurm.gpus_per_node`` -> ``--slurm-gpus-per-node``."""
    if not arg.startswith("--") or arg.startswith("--config"):
        return arg
    flag, equals, value = arg.partition("=")
    return re.sub(r"[._]", "-", flag) + equals + value


def translate_sweep(argv: Sequence[str]) -> list[str]:
    args, out = list(argv), []
    command = args.pop(0) if args else ""
    out.append(command)
    positional_flag = "--config" if command == "run" else "--workdir"
    while args:
        arg = args.pop(0)
        if arg == "--set" and args:
            out.append(f"--config.{args.pop(0)}")
        elif arg.startswith("--set="):
            out.append(f"--config.{arg[len('--set=') :]}")
        elif not arg.startswith("-") and positional_flag:
            out += [positional_flag, arg]
            positional_flag = ""
        else:
            out.append(_kebab(arg))
    return ["sweep", *out]


def translate_evaluate(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    command = args.pop(0) if args and args[0] in _EVALUATE_SUBCOMMANDS else "evaluate"
    out = [command]
    while args:
        arg = _kebab(args.pop(0))
        if arg in ("--split", "--split=val") and (
            arg == "--split=val" or (args and args[0] == "val")
        ):
            if arg == "--split":
                args.pop(0)
            out += ["--split", "validation"]
        else:
            out.append(arg)
    return out


def sweep_main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    new = translate_sweep(argv)
    old_command("deepnmf-sweep / python -m deepnmf_jax.sweep", "deepnmf " + " ".join(new))
    return deepnmf_main(new)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    new = translate_evaluate(argv)
    old_command("deepnmf-evaluate / python -m deepnmf_jax.evaluate", "deepnmf " + " ".join(new))
    return deepnmf_main(new)
