"""Training configurations (``ml_collections``), all derived from ``default.py``, and the sweep files
of the paper's experiments (``sweeps/``). Installed as ``deepnmf_jax.configs`` from this one folder.

``load`` reads a config by name (``"cifar10"``, ``"cifar10:fast"``, ``"sweeps/fig5:cifar100"``) or by
path (:mod:`deepnmf_jax.config_files`).
"""

from deepnmf_jax.config_files import load, names

__all__ = ["load", "names"]
