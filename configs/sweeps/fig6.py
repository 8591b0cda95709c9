"""Paper Fig. 6: 100 variants of CNMF+1x1, width x1, x2, x4, x8 and groups 1, 2, 4, 8, 16 set
separately for the NMF layers and for the 1x1 convolutions (blocks 2 and 3), which moves the ratio of
convolution (CNN) to NMF parameters while the architecture stays the same.

    deepnmf sweep run --config sweeps/fig6 --dry-run   # the variants and counts
    deepnmf sweep run --config sweeps/fig6 --workdir runs/fig6 --executor slurm \\
        --slurm-gpus-per-node=1 --slurm-cpus-per-task=8 --config.data.data_dir=PATH
    deepnmf sweep report --workdir runs/fig6

The report draws accuracy against parameters (with the Pareto front) and against the CNN/NMF ratio.
The paper's grid is underspecified ("2, 4, 8" in the text, "x1, 2, 4, 8" in the caption, and which
layers were grouped is not said); this is the 4 x 5 x 5 reading of the caption.
"""

import ml_collections

from deepnmf_jax.configs import cifar10
from deepnmf_jax.experiments import grid

WIDTHS = (1, 2, 4, 8)
GROUPS = (1, 2, 4, 8, 16)


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "fig6"
    sweep.base = cifar10.get_config()
    sweep.base.model.name = "cnmf_1x1"
    sweep.points = grid.product(
        grid.axis("model.width", [float(w) for w in WIDTHS]),
        grid.axis("model.groups_nmf", GROUPS),
        grid.axis("model.groups_mix", GROUPS),
    )
    sweep.figures = ("fig6", "curves")
    return sweep
