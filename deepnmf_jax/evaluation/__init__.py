"""Evaluating trained runs: a run opened read-only with its own config, a checkpoint and its
BatchNorm population statistics; metrics and calibration; the robustness suites; exported inference;
weights trained elsewhere brought in as runs."""

from deepnmf_jax.evaluation import commands, corruptions, export, metrics, noise, runs
from deepnmf_jax.evaluation.commands import Selection
from deepnmf_jax.evaluation.runs import TrainedRun, open_run, run_folders

__all__ = [
    "Selection",
    "TrainedRun",
    "commands",
    "corruptions",
    "export",
    "metrics",
    "noise",
    "open_run",
    "run_folders",
    "runs",
]
