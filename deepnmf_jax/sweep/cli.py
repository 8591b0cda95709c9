"""``python -m deepnmf_jax.sweep`` (or ``deepnmf-sweep``): run, watch and report a sweep.

    deepnmf-sweep run configs/sweeps/fig5.py --workdir runs/fig5 [--executor local|slurm]
        [--only 'model=cnmf*'] [--set num_epochs=5] [--dry-run] [--max-parallel N] [--wait]
        [--slurm.partition P] [--slurm.gpus_per_node G] [--slurm.timeout_min M]
        [--slurm.cpus_per_task C] [--slurm.sbatch KEY=VALUE ...]
    deepnmf-sweep status --workdir runs/fig5
    deepnmf-sweep report --workdir runs/fig5

``run`` skips finished variants, resumes stopped ones and leaves running ones alone; the local
executor runs here until every variant is done (Ctrl-C: each saves and stops), the SLURM executor
submits one job array and returns (``--wait``: until the jobs leave the queue). Errors a user can
cause are one ``error: ...`` line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from deepnmf_jax.errors import ConfigError, UserError
from deepnmf_jax.sweep import figures, launch, report, spec, status

PLAN_FILE = "sweep.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepnmf-sweep", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run (or resume) the variants of a sweep file")
    run.add_argument("sweep", help="sweep file, e.g. configs/sweeps/fig5.py or fig5.py:ARG")
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
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="sets",
        help="override a config key in every variant, e.g. num_epochs=5",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="list the variants and their parameter counts; train nothing",
    )
    run.add_argument(
        "--max-parallel",
        type=int,
        default=0,
        help="variants at once (local default: 1, or one per GPU; slurm: array limit)",
    )
    run.add_argument(
        "--timeout-min",
        type=float,
        default=0,
        help="time limit of each job in minutes (local default 30 days; slurm: --slurm.timeout_min)",
    )
    run.add_argument(
        "--wait", action="store_true", help="slurm: wait until the jobs leave the queue"
    )
    run.add_argument("--slurm.partition", dest="partition")
    run.add_argument("--slurm.gpus_per_node", dest="gpus_per_node", type=int)
    run.add_argument("--slurm.cpus_per_task", dest="cpus_per_task", type=int)
    run.add_argument("--slurm.mem", dest="mem", help="e.g. 16G")
    run.add_argument(
        "--slurm.timeout_min",
        dest="slurm_timeout_min",
        type=int,
        default=1440,
        help="per job; a job that runs out is requeued and resumes (default 1440)",
    )
    run.add_argument(
        "--slurm.sbatch",
        dest="sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch option, e.g. account=lab or qos=high (repeatable)",
    )
    for name, text in (("status", "each variant's state"), ("report", "tables and figures")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("workdir_pos", nargs="?", metavar="DIR")
        sub.add_argument("--workdir")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return run(args)
        folder = _folder(args.workdir or getattr(args, "workdir_pos", None))
        if args.command == "status":
            print(status.format_table(_statuses(folder)))
        else:
            write_report(folder)
        return 0
    except UserError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _folder(text: str | None) -> pathlib.Path:
    if not text:
        raise ConfigError("give the sweep's folder: --workdir DIR")
    folder = pathlib.Path(text)
    if not (folder / PLAN_FILE).is_file():
        raise ConfigError(f"{folder} holds no sweep ({PLAN_FILE} is missing); start it with run")
    return folder


def _load_plan(folder: pathlib.Path) -> dict:
    return json.loads((folder / PLAN_FILE).read_text())


def _statuses(folder: pathlib.Path, plan: dict | None = None) -> list[status.VariantStatus]:
    plan = plan or _load_plan(folder)
    queue = launch.slurm_queue()
    return [
        status.variant_status(
            folder / v["name"], v["name"], v["config"]["num_epochs"], queue, v.get("skipped")
        )
        for v in plan["variants"]
    ]


def _dry_run_table(planned: list[spec.Planned]) -> str:
    width = max(len(p.name) for p in planned)
    lines = [
        f"{'variant':<{width}}  {'total':>9}  {'NMF':>9}  {'conv':>9}  {'BN':>5}  {'CNN/NMF':>8}  {'MFLOP/img':>9}"
    ]
    for p in planned:
        if p.skipped:
            lines.append(f"{p.name:<{width}}  skipped: {p.skipped}")
            continue
        c = p.parameters
        ratio = "-" if c["cnn_nmf_ratio"] is None else f"{c['cnn_nmf_ratio']:.4g}"
        lines.append(
            f"{p.name:<{width}}  {c['total']:>9,}  {c['nmf']:>9,}  {c['conv']:>9,}  "
            f"{c['batchnorm']:>5,}  {ratio:>8}  {c['train_mflop_per_image']:>9,.0f}"
        )
    ratios = [
        p.parameters["cnn_nmf_ratio"]
        for p in planned
        if p.parameters and p.parameters["cnn_nmf_ratio"]
    ]
    summary = f"{len(planned)} variants, {sum(bool(p.skipped) for p in planned)} skipped"
    if ratios:
        summary += f"; CNN/NMF ratio from {min(ratios):.4f} to {max(ratios):.4f}"
    work = sum(
        p.parameters["train_mflop_per_image"] * 1e6 * p.config.num_seeds * _images(p.config)
        for p in planned
        if p.parameters
    )
    summary += (
        f"\ntraining work: {work / 1e15:,.1f} PFLOP per epoch of every variant and seed "
        "(MFLOP/img: forward + backward of one image, hand-counted by deepnmf_jax/flops.py)"
    )
    return "\n".join([*lines, summary])


def _images(config) -> int:
    """Training images per epoch of a config, as far as the plan knows without loading data."""
    from deepnmf_jax.dataset_files import DATASETS

    total = 1_000 if config.data.source == "sample" else DATASETS[config.data.name].train_size
    total = min(total, config.data.train_limit or total)
    return total - config.data.validation_size


def run(args) -> int:
    sweep = spec.load(args.sweep)
    planned = spec.plan(sweep, args.only, args.sets)
    if args.dry_run:
        print(_dry_run_table(planned))
        return 0
    if not args.workdir:
        raise ConfigError("run needs --workdir DIR (or --dry-run)")
    folder = pathlib.Path(args.workdir)
    plan = _merge_plan(folder, sweep, args, planned)
    states = {s.name: s for s in _statuses(folder, plan)}
    todo, counts = [], {}
    for p in planned:
        state = states[p.name].state
        counts[state] = counts.get(state, 0) + 1
        if state in ("not started", "stopped", "failed"):
            todo.append((p.name, p.config.to_json(), folder / p.name))
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"sweep {sweep.name}: {len(planned)} variants ({summary}); starting {len(todo)}")
    logs = folder / "logs"
    if args.executor == "local" and todo:
        start = time.monotonic()

        def on_done(name):
            row = status.variant_status(folder / name, name, plan_epochs[name], {})
            accuracy = (
                "" if row.test_accuracy is None else f", test acc {100 * row.test_accuracy:.2f} %"
            )
            note = f": {row.error}" if row.error else ""
            elapsed = (time.monotonic() - start) / 60
            print(
                f"[{elapsed:6.1f} min] {name}: {row.state}{note} ({row.epochs}/{row.num_epochs} epochs{accuracy})",
                flush=True,
            )

        plan_epochs = {v["name"]: v["config"]["num_epochs"] for v in plan["variants"]}
        timeout = args.timeout_min or 30 * 24 * 60
        launch.run_local(todo, logs, args.max_parallel, timeout, on_done)
    elif todo:
        options = {
            "timeout_min": args.timeout_min or args.slurm_timeout_min,
            "max_parallel": args.max_parallel,
            "partition": args.partition,
            "gpus_per_node": args.gpus_per_node,
            "cpus_per_task": args.cpus_per_task,
            "mem": args.mem,
            "additional_parameters": dict(_key_value(text) for text in args.sbatch),
        }
        ids = launch.submit_slurm(todo, logs, options, f"deepnmf-{sweep.name}")
        print(f"submitted {len(ids)} jobs ({ids[0].split('_')[0]} array); logs in {logs}")
        if args.wait:
            _wait_for_queue(ids)
    print(status.format_table(_statuses(folder)))
    print(f"tables and figures: python -m deepnmf_jax.sweep report --workdir {folder}")
    return 0


def _key_value(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals:
        raise ConfigError(f"--slurm.sbatch {text!r} is not KEY=VALUE")
    return key, value


def _wait_for_queue(job_ids: list[str], poll_s: float = 2.0) -> None:
    while any(job in launch.slurm_queue() for job in job_ids):
        time.sleep(poll_s)


def _merge_plan(folder: pathlib.Path, sweep, args, planned: list[spec.Planned]) -> dict:
    """Writes ``sweep.json``: the plan of this run merged into earlier ones, by variant name (a
    run with ``--only`` adds to the sweep; ``--set`` updates the variants it runs)."""
    import deepnmf_jax
    from deepnmf_jax import workdir as workdir_lib

    path = folder / PLAN_FILE
    previous = json.loads(path.read_text()) if path.is_file() else {"variants": []}
    entries = {v["name"]: v for v in previous["variants"]}
    for p in planned:
        entries[p.name] = {
            "name": p.name,
            "overrides": p.overrides,
            "config": json.loads(p.config.to_json()),
            "parameters": p.parameters,
            "skipped": p.skipped,
        }
    order = [v.name for v in spec.grid.variants(list(sweep.points))]
    variants = sorted(
        entries.values(), key=lambda v: order.index(v["name"]) if v["name"] in order else len(order)
    )
    plan = {
        "name": sweep.name,
        "sweep_file": args.sweep,
        "figures": list(sweep.get("figures", ("curves",))),
        "paper": dict(sweep.get("paper", {}) or {}),
        "version": deepnmf_jax.__version__,
        "variants": variants,
    }
    workdir_lib.prepare(folder)
    workdir_lib.atomic_write_text(path, json.dumps(plan, indent=1))
    return plan


def write_report(folder: pathlib.Path) -> list[pathlib.Path]:
    """``summary.csv``, ``summary.md`` and the sweep's figures, from what its variants wrote."""
    from deepnmf_jax import workdir as workdir_lib

    plan = _load_plan(folder)
    rows = report.collect(folder, plan["variants"], _statuses(folder, plan))
    title = f"sweep {plan['name']}"
    paper = plan.get("paper") or None
    workdir_lib.atomic_write_text(folder / "summary.csv", report.to_csv(rows))
    workdir_lib.atomic_write_text(folder / "summary.md", report.to_markdown(rows, title, paper))
    written = [folder / "summary.csv", folder / "summary.md"]
    drawn = {
        "fig5": lambda: figures.fig5(rows, folder, title, paper),
        "fig6": lambda: figures.fig6(rows, folder, title),
        "curves": lambda: figures.learning_curves(rows, folder, title),
    }
    for name in plan.get("figures", ["curves"]):
        written += drawn[name]()
    for path in written:
        print(path)
    return written
