"""Evaluating trained runs: metrics, the robustness suite, exported inference, reference weights.

* :mod:`~deepnmf_jax.evaluate.runs`: a run opened read-only with its own config and a checkpoint;
* :mod:`~deepnmf_jax.evaluate.metrics`: accuracy, per-class accuracy, confusion, calibration;
* :mod:`~deepnmf_jax.evaluate.corruptions` and :mod:`~deepnmf_jax.evaluate.noise`: the reference's
  noise suite and CIFAR-10-C-style corruptions;
* :mod:`~deepnmf_jax.evaluate.export`: ``jax.export`` (and ONNX) of one seed's inference;
* :mod:`~deepnmf_jax.evaluate.reference_import`: a PyTorch reference state_dict as a run;
* :mod:`~deepnmf_jax.evaluate.cli`: ``python -m deepnmf_jax.evaluate``.
"""
