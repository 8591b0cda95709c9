"""Data: the datasets as uint8 arrays (read as data only), their config section, the augmentation
that runs inside the jitted train step, and the CIFAR-10 sample bundled with the package."""

from deepnmf_jax.data import archives, augment, files
from deepnmf_jax.data.augment import AugmentConfig, preprocess_for_eval, preprocess_for_train
from deepnmf_jax.data.config import DATA_ORDERS, SOURCES, DataConfig
from deepnmf_jax.data.files import DATASETS, Split
from deepnmf_jax.data.pipeline import (
    DataNotFoundError,
    Dataset,
    load_dataset,
    load_for_config,
    load_sample,
)

__all__ = [
    "DATASETS",
    "DATA_ORDERS",
    "SOURCES",
    "AugmentConfig",
    "DataConfig",
    "DataNotFoundError",
    "Dataset",
    "Split",
    "archives",
    "augment",
    "files",
    "load_dataset",
    "load_for_config",
    "load_sample",
    "preprocess_for_eval",
    "preprocess_for_train",
]
