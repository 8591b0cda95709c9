"""CIFAR-100 (paper appendix A): the CIFAR-10 recipe with 100 classes (fine labels).

    deepnmf train --config cifar100 --workdir runs/cifar100 \\
        --config.data.data_dir=PATH_WITH_cifar-100-python.tar.gz

The reference code has no CIFAR-100 loader; this applies its CIFAR-10 recipe unchanged.
"""

from deepnmf_jax.configs import default


def get_config():
    config = default.get_config()
    config.data.name = "cifar100"
    return config
