"""Paper Fig. 5: the four models (CNN, CNMF, CNN+1x1, CNMF+1x1), 5 seeds each, the paper's recipe.

    deepnmf sweep run --config sweeps/fig5 --workdir runs/fig5 \\
        --config.data.data_dir=PATH_WITH_cifar-10-python.tar.gz
    deepnmf sweep run --config sweeps/fig5:fashion_mnist --workdir runs/fig5_fmnist
    deepnmf sweep run --config sweeps/fig5:cifar100 --workdir runs/fig5_c100
    deepnmf sweep report --workdir runs/fig5

Expected on CIFAR-10 (paper, mean over 5 seeds, up to 500 epochs of reduce-on-plateau):
CNN 81.0 %, CNMF 81.5 %, CNN+1x1 82.8 %, CNMF+1x1 83.7 %. Fashion-MNIST and CIFAR-100 are the
paper's appendix A (no numbers are drawn for them). A 1-epoch smoke version of the same grid:
``--config.num_epochs=1 --config.num_seeds=1``.
"""

import ml_collections

from deepnmf_jax.configs import cifar10, cifar100, fashion_mnist
from deepnmf_jax.experiments import grid

MODELS = ("cnn", "cnmf", "cnn_1x1", "cnmf_1x1")
PAPER_CIFAR10 = {"cnn": 0.810, "cnmf": 0.815, "cnn_1x1": 0.828, "cnmf_1x1": 0.837}
DATASETS = {"cifar10": cifar10, "fashion_mnist": fashion_mnist, "cifar100": cifar100}


def get_config(dataset: str = "cifar10") -> ml_collections.ConfigDict:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r} for fig5; use one of {sorted(DATASETS)}")
    sweep = ml_collections.ConfigDict()
    sweep.name = "fig5" if dataset == "cifar10" else f"fig5_{dataset}"
    sweep.base = DATASETS[dataset].get_config()
    sweep.points = grid.axis("model.name", MODELS)
    sweep.figures = ("fig5", "curves")
    if dataset == "cifar10":
        sweep.paper = {f"model={name}": value for name, value in PAPER_CIFAR10.items()}
    return sweep
