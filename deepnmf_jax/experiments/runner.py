"""Running a sweep: its plan file (``sweep.json``), the variants left to run, the executors, and the
report. ``deepnmf sweep`` is a thin front-end to these.

``sweep.json`` is merged by variant name under an exclusive lock (``.sweep.lock``): two ``run``
commands at once (``--only`` on different variants) each add their variants, none is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import time
from collections.abc import Callable, Iterator

from deepnmf_jax._version import __version__
from deepnmf_jax.data.files import DATASETS
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.experiments import figures, launch, report, spec, status
from deepnmf_jax.experiments.records import read_json
from deepnmf_jax.training import workdir as workdir_lib

PLAN_FILE = "sweep.json"
PLAN_LOCK = ".sweep.lock"
RUNNABLE = ("not started", "stopped", "failed")


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """What ``--executor slurm`` submits with (``None``: the cluster's default)."""

    partition: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    timeout_min: int = 1440
    sbatch: tuple[tuple[str, str], ...] = ()


def sweep_folder(text: str | None) -> pathlib.Path:
    """A sweep's folder, checked to hold ``sweep.json``."""
    if not text:
        raise ConfigError("give the sweep's folder: --workdir DIR")
    folder = pathlib.Path(text)
    if not (folder / PLAN_FILE).is_file():
        raise ConfigError(f"{folder} holds no sweep ({PLAN_FILE} is missing); start it with run")
    return folder


def load_plan(folder: pathlib.Path) -> dict:
    plan = read_json(folder / PLAN_FILE)
    if plan is None or not isinstance(plan.get("variants"), list):
        raise ConfigError(
            f"{folder / PLAN_FILE} is damaged; rerun `deepnmf sweep run` to rewrite it"
        )
    return plan


def statuses(folder: pathlib.Path, plan: dict | None = None) -> list[status.VariantStatus]:
    plan = plan or load_plan(folder)
    queue = launch.slurm_queue()
    return [
        status.variant_status(
            folder / v["name"], v["name"], v["config"]["num_epochs"], queue, v.get("skipped")
        )
        for v in plan["variants"]
    ]


@contextlib.contextmanager
def _plan_lock(folder: pathlib.Path) -> Iterator[None]:
    descriptor = os.open(folder / PLAN_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def merge_plan(
    folder: pathlib.Path, sweep: spec.Sweep, sweep_file: str, planned: list[spec.Planned]
) -> dict:
    """Writes ``sweep.json``: the plan of this run merged into earlier ones, by variant name (a
    run with ``--only`` adds to the sweep; overrides update the variants it runs)."""
    workdir_lib.prepare(folder)
    path = folder / PLAN_FILE
    with _plan_lock(folder):
        previous = read_json(path) if path.is_file() else None
        entries = {v["name"]: v for v in (previous or {}).get("variants", [])}
        for p in planned:
            entries[p.name] = {
                "name": p.name,
                "overrides": p.overrides,
                "config": p.config.to_dict(),
                "parameters": p.parameters,
                "skipped": p.skipped,
            }
        order = [v.name for v in spec.grid.variants(sweep.points)]
        variants = sorted(
            entries.values(),
            key=lambda v: order.index(v["name"]) if v["name"] in order else len(order),
        )
        plan = {
            "name": sweep.name,
            "sweep_file": sweep_file,
            "figures": list(sweep.figures),
            "paper": dict(sweep.paper),
            "note": sweep.note,
            "version": __version__,
            "variants": variants,
        }
        workdir_lib.atomic_write_text(path, json.dumps(plan, indent=1))
    return plan


def images_per_epoch(config) -> int:
    """Training images per epoch of a config, as far as the plan knows without loading data."""
    total = 1_000 if config.data.source == "sample" else DATASETS[config.data.name].train_size
    total = min(total, config.data.train_limit or total)
    return total - config.data.validation_size


def dry_run_table(planned: list[spec.Planned]) -> str:
    """The variants with their parameters, CNN/NMF ratio and training work; nothing is trained."""
    width = max(len(p.name) for p in planned)
    lines = [
        f"{'variant':<{width}}  {'total':>9}  {'NMF':>9}  {'conv':>9}  {'BN':>5}  {'CNN/NMF':>8}  "
        f"{'MFLOP/img':>9}"
    ]
    for p in planned:
        if p.skipped or not p.parameters:
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
        p.parameters["train_mflop_per_image"]
        * 1e6
        * p.config.num_seeds
        * images_per_epoch(p.config)
        for p in planned
        if p.parameters
    )
    summary += (
        f"\ntraining work: {work / 1e15:,.1f} PFLOP per epoch of every variant and seed "
        "(MFLOP/img: forward + backward of one image, hand-counted by deepnmf_jax.models.flops)"
    )
    return "\n".join([*lines, summary])


def run(
    sweep: spec.Sweep,
    sweep_file: str,
    planned: list[spec.Planned],
    folder: pathlib.Path,
    executor: str = "local",
    max_parallel: int = 0,
    timeout_min: float = 0,
    slurm: SlurmOptions | None = None,
    wait: bool = False,
    say: Callable[[str], None] = print,
) -> None:
    """Runs (or resumes) the variants that are not done or running, here or on SLURM."""
    plan = merge_plan(folder, sweep, sweep_file, planned)
    states = {s.name: s for s in statuses(folder, plan)}
    todo, counts = [], {}
    for p in planned:
        state = states[p.name].state
        counts[state] = counts.get(state, 0) + 1
        if state in RUNNABLE:
            todo.append((p.name, p.config.to_json(), folder / p.name))
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    say(f"sweep {sweep.name}: {len(planned)} variants ({summary}); starting {len(todo)}")
    logs = folder / "logs"
    if executor == "local" and todo:
        start = time.monotonic()
        plan_epochs = {v["name"]: v["config"]["num_epochs"] for v in plan["variants"]}

        def on_done(name):
            row = status.variant_status(folder / name, name, plan_epochs[name], {})
            accuracy = (
                "" if row.test_accuracy is None else f", test acc {100 * row.test_accuracy:.2f} %"
            )
            note = f": {row.error}" if row.error else ""
            elapsed = (time.monotonic() - start) / 60
            say(
                f"[{elapsed:6.1f} min] {name}: {row.state}{note} "
                f"({row.epochs}/{row.num_epochs} epochs{accuracy})"
            )

        launch.run_local(todo, logs, max_parallel, timeout_min or 30 * 24 * 60, on_done)
    elif todo:
        slurm = slurm or SlurmOptions()
        options = {
            "timeout_min": timeout_min or slurm.timeout_min,
            "max_parallel": max_parallel,
            "partition": slurm.partition,
            "gpus_per_node": slurm.gpus_per_node,
            "cpus_per_task": slurm.cpus_per_task,
            "mem": slurm.mem,
            "additional_parameters": dict(slurm.sbatch),
        }
        ids = launch.submit_slurm(todo, logs, options, f"deepnmf-{sweep.name}")
        say(f"submitted {len(ids)} jobs ({ids[0].split('_')[0]} array); logs in {logs}")
        if wait:
            while any(job in launch.slurm_queue() for job in ids):
                time.sleep(2.0)
    say(status.format_table(statuses(folder)))
    say(f"tables and figures: deepnmf sweep report --workdir {folder}")


def write_report(folder: pathlib.Path) -> list[pathlib.Path]:
    """``summary.csv``, ``summary.md`` and the sweep's figures, from what its variants wrote."""
    plan = load_plan(folder)
    rows = report.collect(folder, plan["variants"], statuses(folder, plan))
    note = plan.get("note") or ""
    title = f"sweep {plan['name']}" + (f" ({note})" if note else "")
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
    return written
