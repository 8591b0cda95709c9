"""The optimiser (deepnmf_jax.optim): parameter groups, Adam learning rates, torch's plateau schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import default
from deepnmf_jax import models, optim


def _params(name="cnmf_1x1"):
    """The model's parameter tree (zeros: the tests need its structure and shapes only)."""
    model = models.build_model(name, iterations=1)
    images = jax.ShapeDtypeStruct((2, 28, 28, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["params"])


def test_parameter_groups():
    labels = traverse_util.flatten_dict(optim.param_group_labels(_params("cnn_1x1")))
    assert labels[("block1", "a", "kernel")] == "a" and labels[("block1", "a", "bias")] == "a"
    assert labels[("block2", "b", "kernel")] == "b" and labels[("block4", "b", "bias")] == "b"
    assert (
        labels[("block1", "a_bn", "scale")] == "bn" and labels[("block2", "b_bn", "bias")] == "bn"
    )
    assert set(labels.values()) == {"a", "b", "bn"}
    with pytest.raises(ValueError, match="no group"):
        optim.param_group(("block1", "c", "kernel"))


def test_first_adam_step_moves_each_group_by_its_learning_rate():
    config = default.get_config().optim
    params = _params()
    tx = optim.make_optimizer(config)
    grads = jax.tree_util.tree_map(lambda p: jnp.ones_like(p), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for path, update in traverse_util.flatten_dict(updates).items():
        expected = {"a": 0.01, "b": 0.001, "bn": 0.001}[optim.param_group(path)]
        # Adam's first step is -lr * g / (|g| + eps) = -lr (1 - 1e-8) for g = 1.
        np.testing.assert_allclose(update, -expected, rtol=1e-6, err_msg=str(path))


def _run_schedule(losses):
    """Feeds one loss per epoch; returns the scale after each epoch."""
    config = default.get_config().optim
    plateau = optim.make_plateau(config)
    state = plateau.init({"w": jnp.zeros(1, jnp.float32)})
    update = jax.jit(lambda state, loss: optim.plateau_update(plateau, state, loss))
    scales = []
    for loss in losses:
        state = update(state, jnp.asarray(loss, jnp.float32))
        scales.append(float(state.scale))
    return np.array(scales)


def test_plateau_with_constant_loss_follows_torch():
    """torch ReduceLROnPlateau(factor 0.1, patience 10): epoch 0 sets the best, epochs 1..11 are bad,
    and the 11th bad epoch (index 11) reduces; then every 11 epochs. Stop (lr_a < 1e-9, i.e. scale <
    1e-7) after the 8th reduction, at epoch index 88 (spec 3.4)."""
    scales = _run_schedule([5.0] * 100)
    reductions = [i for i in range(1, 100) if scales[i] < scales[i - 1]]
    assert reductions == [11, 22, 33, 44, 55, 66, 77, 88, 99]
    lr_a = 0.01 * scales
    first_stop = int(np.argmax(lr_a < 1e-9))
    assert first_stop == 88
    np.testing.assert_allclose(scales[88], 1e-8, rtol=1e-5)


def test_plateau_relative_threshold_and_reset_by_hand():
    # Epoch 0: best 10. Epochs 1-10: 10.0 (bad 1..10). Epoch 11: 9.9995 is better than 10 but not by
    # the relative 1e-4 (needs < 9.999): bad 11 -> reduce. Epoch 12: 9.0 improves (bad 0).
    # Epochs 13-22: bad 1..10, epoch 23: bad 11 -> second reduction.
    losses = [10.0] * 11 + [9.9995, 9.0] + [9.0] * 11
    scales = _run_schedule(losses)
    reductions = [i for i in range(1, len(losses)) if scales[i] < scales[i - 1]]
    assert reductions == [11, 23]
    # A loss just below the threshold counts as an improvement and resets the count.
    scales = _run_schedule([10.0] * 10 + [9.998] + [9.998] * 10)
    assert np.all(scales == 1.0)
