"""``deepnmf sweep run|status|report``: run, watch and report a sweep.

    deepnmf sweep run --config sweeps/fig5 --workdir runs/fig5 [--executor local|slurm]
        [--only 'model=cnmf*'] [--config.num_epochs=5] [--dry-run] [--max-parallel N] [--wait]
        [--slurm-partition P] [--slurm-gpus-per-node G] [--slurm-timeout-min M]
        [--slurm-cpus-per-task C] [--slurm-mem 16G] [--slurm-sbatch KEY=VALUE ...]
    deepnmf sweep status --workdir runs/fig5
    deepnmf sweep report --workdir runs/fig5

``run`` skips finished variants, resumes stopped ones and leaves running ones alone; the local
executor runs here until every variant is done (Ctrl-C: each saves and stops), the SLURM executor
submits one job array and returns (``--wait``: until the jobs leave the queue). ``--config.KEY=VALUE``
applies to every variant.
"""

from __future__ import annotations

import pathlib

from deepnmf_jax.cli import _common


def _parser() -> _common.Parser:
    parser = _common.Parser(
        prog="deepnmf sweep",
        description="run, watch and report a sweep",
        epilog="subcommands: run (run or resume the variants), status (each variant's state), "
        "report (tables and figures); 'deepnmf sweep run --help' lists run's flags",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="run|status|report")
    run = commands.add_parser("run", help="run (or resume) the variants of a sweep file")
    _common.add_config(run, "the sweep file")
    run.add_argument("--workdir", help="the sweep's folder (one subfolder per variant)")
    run.add_argument("--executor", choices=("local", "slurm"), default="local")
    run.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only variants matching PATTERN, e.g. 'model=cnmf*' (repeatable: all must match)",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="list the variants and their parameter counts"
    )
    run.add_argument(
        "--max-parallel",
        type=int,
        default=0,
        help="variants at once (local default: 1, or one per GPU; slurm: the array's limit)",
    )
    run.add_argument(
        "--timeout-min",
        type=float,
        default=0,
        help="time limit of each job (local default 30 days; slurm: --slurm-timeout-min)",
    )
    run.add_argument(
        "--wait", action="store_true", help="slurm: wait until the jobs leave the queue"
    )
    run.add_argument("--slurm-partition")
    run.add_argument("--slurm-gpus-per-node", type=int)
    run.add_argument("--slurm-cpus-per-task", type=int)
    run.add_argument("--slurm-mem", help="e.g. 16G")
    run.add_argument(
        "--slurm-timeout-min",
        type=int,
        default=1440,
        help="per job; a job that runs out is requeued and resumes (default 1440)",
    )
    run.add_argument(
        "--slurm-sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch option, e.g. account=lab or qos=high (repeatable)",
    )
    _common.add_verbose(run)
    for name, text in (("status", "each variant's state"), ("report", "tables and figures")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--workdir", required=True, help="the sweep's folder")
        _common.add_verbose(sub)
    return parser


def main(argv: list[str]) -> int:
    from deepnmf_jax.experiments import runner, spec, status

    rest, overrides = _common.split_overrides(argv)
    args = _parser().parse_args(rest)
    if args.command == "status":
        print(status.format_table(runner.statuses(runner.sweep_folder(args.workdir))))
        return 0
    if args.command == "report":
        for path in runner.write_report(runner.sweep_folder(args.workdir)):
            print(path)
        return 0
    sweep = spec.load(args.config)
    planned = spec.plan(sweep, args.only, overrides)
    if args.dry_run:
        print(runner.dry_run_table(planned))
        return 0
    if not args.workdir:
        raise _common.UsageError("deepnmf sweep run: needs --workdir DIR (or --dry-run)")
    slurm = runner.SlurmOptions(
        partition=args.slurm_partition,
        gpus_per_node=args.slurm_gpus_per_node,
        cpus_per_task=args.slurm_cpus_per_task,
        mem=args.slurm_mem,
        timeout_min=args.slurm_timeout_min,
        sbatch=tuple(_key_value(text) for text in args.slurm_sbatch),
    )
    runner.run(
        sweep,
        args.config,
        planned,
        pathlib.Path(args.workdir),
        executor=args.executor,
        max_parallel=args.max_parallel,
        timeout_min=args.timeout_min,
        slurm=slurm,
        wait=args.wait,
        say=lambda line: print(line, flush=True),
    )
    return 0


def _key_value(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals:
        raise _common.UsageError(f"--slurm-sbatch {text!r} is not KEY=VALUE")
    return key, value
