"""The paper's experiments as sweeps: a grid of training configs declared in a Python file, run here
or on SLURM through submitit, watched, and reported as tables and figures."""

from deepnmf_jax.experiments import figures, grid, launch, records, report, spec, status
from deepnmf_jax.experiments.grid import axis, concat, product
from deepnmf_jax.experiments.spec import Planned, Sweep, load, plan

__all__ = [
    "Planned",
    "Sweep",
    "axis",
    "concat",
    "figures",
    "grid",
    "launch",
    "load",
    "plan",
    "product",
    "records",
    "report",
    "spec",
    "status",
]
