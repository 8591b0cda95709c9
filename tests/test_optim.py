"""The optimiser (deepnmf_jax.training.optim): parameter groups, Adam learning rates, torch's plateau schedule."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from deepnmf_jax import models
from deepnmf_jax.configs import default
from deepnmf_jax.models import param_counts
from deepnmf_jax.training import optim


def _params(name="cnmf_1x1"):
    """The model's parameter tree (zeros: the tests need its structure and shapes only)."""
    shapes = param_counts.abstract_params(models.build_model(name, iterations=1), (28, 28, 3))
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _roles(name="cnmf_1x1"):
    return models.anatomy(models.build_model(name, iterations=1), (28, 28, 3)).param_roles()


def _optim_config(**overrides):
    config = default.get_config().optim
    config.update(overrides)
    return config


def test_parameter_groups():
    labels = traverse_util.flatten_dict(optim.param_group_labels(_roles("cnn_1x1")))
    assert labels[("block1", "a", "kernel")] == "a" and labels[("block1", "a", "bias")] == "a"
    assert labels[("block2", "b", "kernel")] == "b" and labels[("block4", "b", "bias")] == "b"
    assert (
        labels[("block1", "a_bn", "scale")] == "bn" and labels[("block2", "b_bn", "bias")] == "bn"
    )
    assert set(labels.values()) == {"a", "b", "bn"}


def test_parameter_groups_follow_the_layer_type_not_its_name():
    """An NMF layer anywhere gets the NMF rate; Flax's own layers the 1x1 rate, norms the BN rate."""
    import flax.linen as nn

    from deepnmf_jax.nn import linen as layers

    class Odd(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = layers.NMFConv(4, 3, name="mixer")(x)  # an NMF layer named like a 1x1 one
            x = nn.LayerNorm(name="a")(x)  # a norm named like an a-layer
            x = layers.BatchNorm(name="conv")(x, train)
            return nn.softmax(nn.Dense(10, name="bn")(x.reshape(x.shape[0], -1)))

    roles = models.anatomy(Odd(), (6, 6, 3)).param_roles()
    labels = traverse_util.flatten_dict(optim.param_group_labels(roles))
    assert labels == {
        ("mixer", "kernel"): "a",
        ("a", "scale"): "bn",
        ("a", "bias"): "bn",
        ("conv", "scale"): "bn",
        ("conv", "bias"): "bn",
        ("bn", "kernel"): "b",
        ("bn", "bias"): "b",
    }


def test_first_adam_step_moves_each_group_by_its_learning_rate():
    config = default.get_config().optim
    params, roles = _params(), _roles()
    tx = optim.make_optimizer(config, roles)
    grads = jax.tree_util.tree_map(lambda p: jnp.ones_like(p), params)
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    for path, update in traverse_util.flatten_dict(updates).items():
        expected = {"a": 0.01, "b": 0.001, "bn": 0.001}[optim.GROUP_OF_ROLE[roles[path]]]
        # Adam's first step is -lr * g / (|g| + eps) = -lr (1 - 1e-8) for g = 1.
        np.testing.assert_allclose(update, -expected, rtol=1e-6, err_msg=str(path))


def _run_schedule(losses):
    """Feeds one loss per epoch; returns the scale after each epoch."""
    schedule = optim.Schedule(default.get_config().optim, steps_per_epoch=10, num_epochs=500)
    state = schedule.init({"w": jnp.zeros(1, jnp.float32)})
    update = jax.jit(schedule.advance)
    scales = []
    for loss in losses:
        state = update(state, jnp.asarray(loss, jnp.float32))
        scales.append(float(state.scale))
    return np.array(scales)


def test_plateau_with_constant_loss_follows_torch():
    """torch ReduceLROnPlateau(factor 0.1, patience 10): epoch 0 sets the best, epochs 1..11 are bad,
    and the 11th bad epoch (index 11) reduces; then every 11 epochs. Stop (lr_a < 1e-9, i.e. scale <
    1e-7) after the 8th reduction, at epoch index 88."""
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


def test_cosine_schedule_by_hand():
    """2 warm-up epochs of 10 steps from 0.04 to 1, then cosine to 0.1 at step 100."""
    config = _optim_config(
        schedule="cosine", warmup_epochs=2, initial_lr_fraction=0.04, final_lr_fraction=0.1
    )
    schedule = optim.Schedule(config, steps_per_epoch=10, num_epochs=10)
    state = schedule.init({"w": jnp.zeros(1, jnp.float32)})
    scale = lambda step: float(schedule.scale(state, jnp.asarray(step)))
    np.testing.assert_allclose(scale(0), 0.04, rtol=1e-6)
    np.testing.assert_allclose(scale(10), 0.04 + 0.96 / 2, rtol=1e-6)  # half-way up
    np.testing.assert_allclose(scale(20), 1.0, rtol=1e-6)  # the peak
    # half-way down the cosine (step 60 of 20..100): 0.1 + 0.9 * (1 + cos(pi / 2)) / 2
    np.testing.assert_allclose(scale(60), 0.55, rtol=1e-6)
    np.testing.assert_allclose(scale(100), 0.1, rtol=1e-6)
    # The plateau does not move for the optax schedules, and nothing finishes early.
    assert schedule.advance(state, jnp.float32(5.0)) is state
    assert not schedule.finished(np.float64(1.0))
    assert schedule.rates(0.5) == {"a": 0.005, "b": 0.0005, "bn": 0.0005}


def test_onecycle_schedule_by_hand():
    config = _optim_config(
        schedule="onecycle", warmup_epochs=3, initial_lr_fraction=0.04, final_lr_fraction=0.0004
    )
    schedule = optim.Schedule(config, steps_per_epoch=10, num_epochs=10)
    state = schedule.init({"w": jnp.zeros(1, jnp.float32)})
    scale = lambda step: float(schedule.scale(state, jnp.asarray(step)))
    np.testing.assert_allclose(scale(0), 0.04, rtol=1e-5)
    # cosine ramp up: 0.04 + (1 - 0.04) * (1 - cos(pi * 15 / 30)) / 2 = 0.52
    np.testing.assert_allclose(scale(15), 0.52, rtol=1e-5)
    np.testing.assert_allclose(scale(30), 1.0, rtol=1e-5)
    np.testing.assert_allclose(scale(100), 0.0004, rtol=1e-3)


def test_learning_rates_scale_with_the_batch_size():
    base = {"a": 0.01, "b": 0.001, "bn": 0.001}
    assert optim.group_learning_rates(_optim_config(), 200) == base
    linear = optim.group_learning_rates(_optim_config(lr_batch_scaling="linear"), 200)
    sqrt = optim.group_learning_rates(_optim_config(lr_batch_scaling="sqrt"), 200)
    for group, rate in base.items():
        np.testing.assert_allclose(linear[group], 4 * rate)
        np.testing.assert_allclose(sqrt[group], 2 * rate)


def test_weight_decay_is_decoupled_and_spares_nmf_and_norms():
    """AdamW's first step with zero gradient is -lr * wd * p on the decayed leaves, 0 elsewhere."""
    config = _optim_config(weight_decay=0.5)
    for name, decays_a in (("cnmf_1x1", False), ("cnn_1x1", True)):
        params, roles = jax.tree_util.tree_map(jnp.ones_like, _params(name)), _roles(name)
        tx = optim.make_optimizer(config, roles)
        grads = jax.tree_util.tree_map(jnp.zeros_like, params)
        updates, _ = jax.jit(lambda g, p, tx=tx: tx.update(g, tx.init(p), p))(grads, params)
        for path, update in traverse_util.flatten_dict(updates).items():
            group = optim.GROUP_OF_ROLE[roles[path]]
            decayed = path[-1] == "kernel" and (group == "b" or (group == "a" and decays_a))
            lr = {"a": 0.01, "b": 0.001, "bn": 0.001}[group]
            expected = -lr * 0.5 if decayed else 0.0
            np.testing.assert_allclose(update, expected, rtol=1e-6, err_msg=f"{name} {path}")


def test_ema_by_hand():
    ema, params = {"w": jnp.array([1.0])}, {"w": jnp.array([3.0])}
    # step 0: d = min(0.99, 1 / 10) = 0.1: 0.1 * 1 + 0.9 * 3 = 2.8
    np.testing.assert_allclose(optim.ema_update(ema, params, 0.99, 0)["w"], [2.8], rtol=1e-6)
    # step 990: d = min(0.99, 991 / 1000) = 0.99: 0.99 * 1 + 0.01 * 3 = 1.02
    np.testing.assert_allclose(optim.ema_update(ema, params, 0.99, 990)["w"], [1.02], rtol=1e-6)
