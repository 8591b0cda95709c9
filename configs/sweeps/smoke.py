"""A 2 x 2 sweep on the CIFAR-10 sample bundled with the package, in about a minute on a laptop CPU:
CI's sweep, and a first try of the machinery (two models, two seeds, tiny networks, 2 epochs).

    deepnmf sweep run --config sweeps/smoke --workdir runs/smoke --max-parallel 2
    deepnmf sweep report --workdir runs/smoke

Its tables and figures say that its accuracy is not meant to be above chance (10 %): 60 training
images, 2 epochs.
"""

import ml_collections

from deepnmf_jax.configs import cifar10
from deepnmf_jax.experiments import grid


def get_config() -> ml_collections.ConfigDict:
    base = cifar10.get_config("sample")
    base.num_seeds = 1
    base.num_epochs = 2
    base.batch_size = 10
    base.eval_batch_size = 25
    base.model.width = 0.125
    base.model.iterations = 2
    base.data.train_limit = 60
    base.data.test_limit = 50
    base.tensorboard = False
    sweep = ml_collections.ConfigDict()
    sweep.name = "smoke"
    sweep.base = base
    sweep.points = grid.product(
        grid.axis("model.name", ["cnn", "cnmf"]), grid.axis("seed", [21, 22])
    )
    sweep.figures = ("fig5", "curves")
    sweep.note = "a test of the machinery: its accuracy is not meant to be above chance"
    return sweep
