"""The ``data`` section of a training config: which dataset, from where, and how much of it."""

from __future__ import annotations

import dataclasses
import os

from deepnmf_jax._schema import field
from deepnmf_jax.data.files import DATASETS
from deepnmf_jax.errors import ConfigError

SOURCES = ("auto", "folder", "tfds", "download", "sample")
DATA_ORDERS = ("fixed", "per_seed")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "deepnmf_jax")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from (``source``, ``data_dir``, ...: a run may resume with other values)
    and what of it a run uses (``train_limit``, ``validation_size``, ``order``: fixed for a run)."""

    name: str = field("cifar10")  # cifar10 | cifar100 | fashion_mnist
    # auto: the folder data_dir (then TFDS; a download only when no data_dir is given)
    source: str = field("auto", compiled=False, resume="incidental")
    data_dir: str = field("", compiled=False, resume="incidental")  # folder with the archives
    cache_dir: str = field(DEFAULT_CACHE_DIR, compiled=False, resume="incidental")  # downloads
    download_url: str = field("", compiled=False, resume="incidental")  # a mirror's base URL
    train_limit: int = field(0, compiled=False)  # only the first N training images (0: all)
    test_limit: int = field(0, compiled=False)  # only the first N test images (0: all)
    # hold out N training images (a fixed permutation) to choose best/ on; 0: the reference's
    # protocol (no validation split, best/ on test accuracy); 5000 recommended
    validation_size: int = field(0, compiled=False)
    order: str = field("fixed")  # "fixed": one order for every seed (reference) | "per_seed"
    order_seed: int = field(0)  # the reference seeds its shuffler with 0

    def __post_init__(self):
        if self.name not in DATASETS:
            raise ConfigError(
                f"config.data.name must be one of {tuple(DATASETS)}, got {self.name!r}"
            )
        if self.source not in SOURCES:
            raise ConfigError(f"config.data.source must be one of {SOURCES}, got {self.source!r}")
        if self.order not in DATA_ORDERS:
            raise ConfigError(f"config.data.order must be one of {DATA_ORDERS}, got {self.order!r}")
        for name in ("train_limit", "test_limit", "validation_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config.data.{name} must be >= 0, got {getattr(self, name)}")
        if self.source == "sample" and self.name != "cifar10":
            raise ConfigError(
                f"config.data.source = 'sample' is the bundled CIFAR-10 sample; data.name is "
                f"{self.name!r}"
            )
