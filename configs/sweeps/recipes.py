"""The fast recipe (``configs/cifar10.py:fast``) against the paper's, for CNMF+1x1 and CNN+1x1, each
also with the linear head (no dead class channels) and with BatchNorm at 1x1 (no dead channel at
1x1 at all, ``model.batch_norm_1x1``), 2 seeds, at most 40 epochs, 45,000 training
images (5,000 held out to choose ``best/`` on), the full test set:

    deepnmf sweep run --config sweeps/recipes --workdir runs/recipes \\
        --config.data.data_dir=PATH_WITH_cifar-10-python.tar.gz
    python benchmarks/time_to_accuracy.py runs/recipes --epochs 5 10 20 40 \\
        --out runs/recipes/time_to_accuracy.json --figure runs/recipes/time_to_accuracy

On a 2-vCPU CPU an epoch of one seed took about 6 minutes with evaluation (CNMF+1x1: 4.5-5 of
training, 1 of evaluating 15,000 images) and 2-2.5 (CNN+1x1): the whole grid is about 45 hours
there; ``--config.num_epochs=3`` is the short version, ``--only`` picks variants.
"""

import ml_collections

from deepnmf_jax.configs import cifar10
from deepnmf_jax.experiments import grid

MODELS = ("cnmf_1x1", "cnn_1x1")


def get_config() -> ml_collections.ConfigDict:
    base = cifar10.get_config()
    base.num_seeds = 2
    base.num_epochs = 40
    base.data.validation_size = 5_000
    points = []
    for model in MODELS:
        name = {"model.name": model}
        points += [
            {grid.LABEL: f"{model},paper", **name},
            {grid.LABEL: f"{model},fast", **name, **cifar10.FAST},
            {
                grid.LABEL: f"{model},fast,linear_head",
                **name,
                **cifar10.FAST,
                "model.head": "linear",
            },
            {
                grid.LABEL: f"{model},fast,bn1x1",
                **name,
                **cifar10.FAST,
                "model.batch_norm_1x1": True,
            },
        ]
    sweep = ml_collections.ConfigDict()
    sweep.name = "recipes"
    sweep.base = base
    sweep.points = points
    sweep.figures = ("curves",)
    return sweep
