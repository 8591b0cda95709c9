"""Our train step beside the PyTorch reference's, in one run on one machine: images/s, fraction of the
matmul peak and peak memory, per model, batch size and seed count.

    python benchmarks/side_by_side.py --reference-repo ../deep_nmf --reference-python ~/torch/bin/python
    python benchmarks/side_by_side.py ... --ours before=/tmp/old_tree --ours after=.  # two code trees
    python benchmarks/side_by_side.py ... --ours matmul=. --ours conv=. --set conv:model.patch_conv=conv
    python benchmarks/side_by_side.py ... --ours glibc=. --ours tcmalloc=. --env glibc:DEEPNMF_MALLOC=system
    python benchmarks/side_by_side.py ... --reference-also torch_tc --env torch_tc:LD_PRELOAD=/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
    python benchmarks/side_by_side.py ... --out benchmarks/results/side_by_side_cpu.json

Every configuration runs in its own worker process (``step_worker_jax.py`` for ours, from each code
tree given by ``--ours LABEL=TREE``; ``step_worker_torch.py`` for the reference, under a Python with
torch 2.x and jsmin, the reference repository mahbodnr/deep_nmf on its path). The workers of one
model and batch size are started together and then timed in ``--rounds`` rounds of ``--steps``
steps each, taking turns in an order rotated every round, so a slow stretch of the machine hits all
of them alike. Images/s is the median over rounds; the speed-up is the median of the per-round ratios
to the reference. The reference trains one seed at a time, so its images/s is also what it gives for
five seeds run one after another. The machine's ``jnp.dot`` peak is measured in a process of its own
with nothing else running, before the first worker starts and after the last one ends; the fraction
of the peak is taken against the higher of the two (on a shared virtual machine a single measurement
moved between 300 and 430 GFLOP/s in one day). The peak also takes its turn in every round as one
more worker (``step_worker_peak.py``, the best of its ``--steps`` dots), and each row's "fraction of
the round's peak" is the median over rounds of its images/s against the peak of the same round: the
machine's speed drifts by 20 % within minutes, and a peak timed minutes away from a step measures
the drift as much as the step. Each worker's peak resident memory (``ru_maxrss``) is reported beside
it. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = "runs/benchmarks/side_by_side.json"
MODELS = ("cnn", "cnn_1x1", "cnmf", "cnmf_1x1")


class Worker:
    """A worker process that times train steps when asked (the protocol of the worker scripts)."""

    def __init__(self, label: str, seeds: int, command: list[str], env: dict):
        self.label, self.seeds = label, seeds
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.ready = self._read()
        self.round_medians: list[float] = []
        self.round_best: list[float] = []

    def _read(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"error: the {self.label} worker stopped (exit {self.process.wait()})")
        return json.loads(line)

    def _send(self, request: dict) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def time_round(self, steps: int) -> None:
        seconds = self._send({"steps": steps})["step_s"]
        self.round_medians.append(statistics.median(seconds))
        self.round_best.append(min(seconds))

    def quit(self) -> float:
        rss = self._send({"quit": True})["max_rss_mib"]
        self.process.wait()
        return rss


def _tree_env(tree: pathlib.Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(tree.resolve()), JAX_PLATFORMS="cpu")


def _environment(items: list[str], label: str) -> dict:
    """The ``--env LABEL:KEY=VALUE`` variables of the workers labelled ``label``."""
    chosen = {}
    for item in items:
        prefix, _, rest = item.partition(":")
        key, equals, value = rest.partition("=")
        if not equals or not key:
            raise SystemExit(f"error: --env wants LABEL:KEY=VALUE, got {item!r}")
        if prefix == label:
            chosen[key] = value
    return chosen


def _settings(items: list[str], label: str) -> list[str]:
    """The ``--set`` items for the code tree ``label``: ``KEY=VALUE`` for every tree,
    ``LABEL:KEY=VALUE`` for that one only."""
    chosen = []
    for item in items:
        prefix, colon, rest = item.partition(":")
        if not colon or "=" in prefix:
            chosen.append(item)
        elif prefix == label:
            chosen.append(rest)
    return chosen


PEAK_PROGRAM = (
    "import json, sys; from deepnmf_jax import machine; "
    "print(json.dumps({'peak_gflops': machine.matmul_peak_gflops(int(sys.argv[1]), steps=10), "
    "'machine': machine.machine_info()}))"
)


def measure_peak(args) -> dict:
    """The ``jnp.dot`` peak (best of 10) and the machine, from a process of its own."""
    tree = args.ours[0][1]  # the first code tree of ours
    done = subprocess.run(
        [sys.executable, "-c", PEAK_PROGRAM, str(args.peak_size)],
        env=_tree_env(tree),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"error: the peak measurement failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_workers(model: str, batch: int, args) -> list[Worker]:
    workers = []
    if args.reference_repo:
        command = [
            args.reference_python,
            str(HERE / "step_worker_torch.py"),
            f"--repo={args.reference_repo}",
            f"--model={model}",
            f"--batch={batch}",
            f"--threads={args.threads}",
        ]
        # the reference first (the ratios' denominator), then its --reference-also copies
        for label in ("reference", *args.reference_also):
            env = dict(os.environ, PYTHONPATH=str(pathlib.Path(args.reference_repo).resolve()))
            env.update(_environment(args.env, label))
            workers.append(Worker(label, 1, command, env))
    for label, tree in args.ours:
        for seeds in args.seeds:
            command = [
                sys.executable,
                str(HERE / "step_worker_jax.py"),
                f"--model={model}",
                f"--batch={batch}",
                f"--seeds={seeds}",
                *[f"--set={item}" for item in _settings(args.set, label)],
            ]
            env = _tree_env(tree) | _environment(args.env, label)
            workers.append(Worker(label, seeds, command, env))
    return workers


def start_peak_worker(args) -> Worker:
    """The ``jnp.dot`` peak as one more worker of the rounds (``step_worker_peak.py``)."""
    command = [sys.executable, str(HERE / "step_worker_peak.py"), f"--size={args.peak_size}"]
    return Worker("peak", 1, command, _tree_env(args.ours[0][1]))


def measure(model: str, batch: int, args) -> list[dict]:
    workers = start_workers(model, batch, args)
    peak = start_peak_worker(args)
    for round_index in range(args.rounds):
        turns = [*workers, peak]
        shift = round_index % len(turns)
        for worker in turns[shift:] + turns[:shift]:
            worker.time_round(args.steps)
    peak.quit()
    # each round's peak: its best dot (as the peak measured alone is a best of 10)
    round_peaks = [peak.ready["flop_per_step"] / s / 1e9 for s in peak.round_best]
    mflop = next(w.ready["mflop_per_image"] for w in workers if "mflop_per_image" in w.ready)
    rows = []
    for worker in workers:
        rss = worker.quit()
        step_s = statistics.median(worker.round_medians)
        images_per_s = batch * worker.seeds / step_s
        row = {
            "model": model,
            "code": worker.label,
            "batch": batch,
            "seeds": worker.seeds,
            "parameters": worker.ready["parameters"],
            "software": worker.ready["ready"],
            "compile_s": worker.ready["compile_s"],
            "step_s": step_s,
            "round_step_s": worker.round_medians,
            "images_per_s": images_per_s,
            "max_rss_mib": rss,
            "allocator": worker.ready.get("allocator", "?"),
            "mflop_per_image": mflop,
            "round_peak_gflops": round_peaks,
            # each round's images/s against that round's peak, the median over rounds
            "fraction_of_round_peak": statistics.median(
                mflop * batch * worker.seeds / step / 1e3 / gflops
                for step, gflops in zip(worker.round_medians, round_peaks, strict=True)
            ),
        }
        # against the reference, and against each --reference-also copy: "vs_<label>"
        for other in workers:
            if other.label not in ("reference", *args.reference_also):
                continue
            ratios = [
                (batch * worker.seeds / ours) / (batch / theirs)
                for ours, theirs in zip(worker.round_medians, other.round_medians, strict=True)
            ]
            row[f"vs_{other.label}"] = statistics.median(ratios)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table (a "vs" column for the reference and each --reference-also)."""
    others = sorted({k for r in rows for k in r if k.startswith("vs_") and k != "vs_reference"})
    extra_heads = "".join(f" vs {k.removeprefix('vs_')} |" for k in others)
    lines = [
        "| model | batch | seeds | code | images/s | vs reference |"
        + extra_heads
        + " fraction of peak | of the round's peak | peak RSS (MiB) |",
        "|---|---|---|---|---|---|" + "---|" * len(others) + "---|---|---|",
    ]

    def percent(value):
        return "-" if value is None else f"{100 * value:.0f} %"

    def times(value):
        return "-" if value is None else f"{value:.2f}x"

    for r in rows:
        extra = "".join(f" {times(r.get(k))} |" for k in others)
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['seeds']} | {r['code']} | "
            f"{r['images_per_s']:.0f} | {times(r.get('vs_reference'))} |{extra} "
            f"{percent(r.get('fraction_of_peak'))} | {percent(r.get('fraction_of_round_peak'))} | "
            f"{r['max_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def _labelled_tree(text: str) -> tuple[str, pathlib.Path]:
    label, _, tree = text.partition("=")
    if not tree:
        raise argparse.ArgumentTypeError(f"--ours wants LABEL=FOLDER, got {text!r}")
    if not (pathlib.Path(tree) / "deepnmf_jax").is_dir():
        raise argparse.ArgumentTypeError(f"--ours {text!r}: no deepnmf_jax package in {tree}")
    return label, pathlib.Path(tree)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[50])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 5], help="our seed counts")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds, order rotated")
    parser.add_argument("--steps", type=int, default=3, help="steps per worker and round")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--reference-repo", help="mahbodnr/deep_nmf's folder (none: ours only)")
    parser.add_argument("--reference-python", default="python", help="a Python with torch")
    parser.add_argument(
        "--reference-also",
        action="append",
        default=[],
        metavar="LABEL",
        help="one more reference worker under LABEL (repeat), e.g. with --env LABEL:LD_PRELOAD=...",
    )
    parser.add_argument(
        "--ours",
        action="append",
        type=_labelled_tree,
        help="LABEL=FOLDER: a code tree of ours to time (repeat; default ours=this repository)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="our config KEY=VALUE, or LABEL:KEY=VALUE for one code tree only",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        help="LABEL:KEY=VALUE, an environment variable of that label's workers (reference too), "
        "e.g. ours:DEEPNMF_MALLOC=system",
    )
    parser.add_argument("--peak-size", type=int, default=4096, help="matrix size of the peak test")
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output")
    args = parser.parse_args(argv)
    args.ours = args.ours or [("ours", HERE.parent)]

    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    first = measure_peak(args)
    report["machine"] = first["machine"]
    print(
        f"jnp.dot float32 peak before the workers: {first['peak_gflops']:.0f} GFLOP/s", flush=True
    )
    for model in args.models:
        for batch in args.batches:
            rows = measure(model, batch, args)
            report["rows"] += rows
            print(table(rows).split("\n", 2)[-1], flush=True)
    peaks = [first["peak_gflops"], measure_peak(args)["peak_gflops"]]
    report["peak_gflops_measured"] = peaks
    report["peak_gflops"] = max(peaks)
    for row in report["rows"]:
        row["fraction_of_peak"] = row["mflop_per_image"] * row["images_per_s"] / 1e3 / max(peaks)
    print(
        f"jnp.dot float32 peak {peaks[0]:.0f} before, {peaks[1]:.0f} after: {max(peaks):.0f} GFLOP/s"
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(table(report["rows"]))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
