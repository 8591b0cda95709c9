"""deepnmf-jax: deep non-negative matrix factorization networks in JAX and Flax.

    import deepnmf_jax as dnmf

    h = dnmf.nmf_fixed_point(dnmf.l1_normalize(x), dnmf.normalize_weight(u))   # the NMF layer
    model = dnmf.build_model("cnmf_1x1")                                        # a paper model
    dnmf.train_and_evaluate(config, "runs/cnmf", model=None)                    # the trainer
    model, variables = dnmf.pretrained.load("cnmf_1x1_cifar10_fast")            # released weights

Subpackages by role, each importing only from those before it: ``core`` (pure JAX), ``nn`` (Flax
layers, Linen and ``nnx``), ``models``, ``data``, ``reference`` (the PyTorch reference's layouts),
``training``, ``pretrained``, ``experiments`` (sweeps), ``evaluation``, ``configs`` and ``cli``.

The names below load on first use (PEP 562), so ``import deepnmf_jax`` costs nothing until one is
read, and the command line can re-execute itself on tcmalloc (:mod:`deepnmf_jax._malloc`) before
JAX is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from deepnmf_jax._version import __version__

_SUBPACKAGES = (
    "configs",
    "core",
    "data",
    "evaluation",
    "experiments",
    "models",
    "pretrained",
    "reference",
    "training",
)
# public name -> the module it comes from
_ORIGINS = {
    **dict.fromkeys(
        (
            "Approximate",
            "Implicit",
            "LocalRule",
            "NMFOptions",
            "Unrolled",
            "checked",
            "extract_patches",
            "l1_normalize",
            "nmf_fixed_point",
            "normalize_weight",
        ),
        "deepnmf_jax.core",
    ),
    **dict.fromkeys(
        (
            "PAPER_MODELS",
            "Block",
            "BlockSpec",
            "DeepNMF",
            "ModelConfig",
            "build_model",
            "paper_blocks",
        ),
        "deepnmf_jax.models",
    ),
    **dict.fromkeys(("paper_loss", "reference_loss"), "deepnmf_jax.models.losses"),
    **dict.fromkeys(
        ("BatchNorm", "Mix1x1", "NMFConv", "PatchConv", "avg_pool", "nnx"), "deepnmf_jax.nn"
    ),
    **dict.fromkeys(("TrainConfig", "train_and_evaluate"), "deepnmf_jax.training"),
}

__all__ = [
    "PAPER_MODELS",
    "Approximate",
    "BatchNorm",
    "Block",
    "BlockSpec",
    "DeepNMF",
    "Implicit",
    "LocalRule",
    "Mix1x1",
    "ModelConfig",
    "NMFConv",
    "NMFOptions",
    "PatchConv",
    "TrainConfig",
    "Unrolled",
    "__version__",
    "avg_pool",
    "build_model",
    "checked",
    "configs",
    "core",
    "data",
    "evaluation",
    "experiments",
    "extract_patches",
    "l1_normalize",
    "models",
    "nmf_fixed_point",
    "nnx",
    "normalize_weight",
    "paper_blocks",
    "paper_loss",
    "pretrained",
    "reference",
    "reference_loss",
    "train_and_evaluate",
    "training",
]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"deepnmf_jax.{name}")
    if name in _ORIGINS:
        value = getattr(importlib.import_module(_ORIGINS[name]), name)
        globals()[name] = value  # later reads skip this function
        return value
    raise AttributeError(f"module 'deepnmf_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from deepnmf_jax import (
        configs,
        core,
        data,
        evaluation,
        experiments,
        models,
        pretrained,
        reference,
        training,
    )
    from deepnmf_jax.core import (
        Approximate,
        Implicit,
        LocalRule,
        NMFOptions,
        Unrolled,
        checked,
        extract_patches,
        l1_normalize,
        nmf_fixed_point,
        normalize_weight,
    )
    from deepnmf_jax.models import (
        PAPER_MODELS,
        Block,
        BlockSpec,
        DeepNMF,
        ModelConfig,
        build_model,
        paper_blocks,
    )
    from deepnmf_jax.models.losses import paper_loss, reference_loss
    from deepnmf_jax.nn import BatchNorm, Mix1x1, NMFConv, PatchConv, avg_pool, nnx
    from deepnmf_jax.training import TrainConfig, train_and_evaluate
