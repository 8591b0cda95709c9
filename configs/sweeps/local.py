"""Paper sec. 4.2: CNMF whose NMF layers learn by a local rule instead of the backpropagated
gradient (``model.gradient=local_kl``: the reference's unsupervised KL rule for dL/dW; errors still
reach lower layers through dL/dx). The paper reports 32 % test accuracy for its local-learning
network; ``local_mse`` (the reference's squared-error rule) is the other local option.

    deepnmf sweep run --config sweeps/local --workdir runs/local
"""

import ml_collections

from deepnmf_jax.configs import cifar10
from deepnmf_jax.experiments import grid


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "local"
    sweep.base = cifar10.get_config()
    sweep.points = grid.product(
        grid.axis("model.name", ["cnmf"]), grid.axis("model.gradient", ["local_kl", "local_mse"])
    )
    sweep.figures = ("fig5", "curves")
    sweep.paper = {"model=cnmf,gradient=local_kl": 0.32}
    return sweep
