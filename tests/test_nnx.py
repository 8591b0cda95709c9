"""The Flax NNX layers (deepnmf_jax.nnx) against the Linen layers: the same weights give the same
outputs and the same gradients (float64), because both call the same functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import deepnmf_jax as dnmf


def _images(key, shape=(2, 8, 8, 3)):
    return jax.random.uniform(key, shape, jnp.float64)


def _grads(fn, x, params):
    return jax.grad(lambda x, p: jnp.sum(jnp.sin(fn(x, p))), (0, 1))(x, params)


def _assert_same(linen_layer, nnx_layer, x, linen_call, nnx_call):
    """Copies the Linen layer's parameters into the NNX layer, then compares outputs and the
    gradients with respect to the input and every parameter."""
    variables = linen_layer.init(jax.random.key(0), x, **linen_call)
    params = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), variables["params"])
    for name, value in params.items():
        getattr(nnx_layer, name)[...] = value
    graph, _, rest = nnx.split(nnx_layer, nnx.Param, ...)

    def linen(x, p):
        return linen_layer.apply({"params": p}, x, **linen_call)

    def nnx_fn(x, p):
        return nnx.merge(graph, p, rest)(x, **nnx_call)

    nnx_params = nnx.state(nnx_layer, nnx.Param)
    np.testing.assert_allclose(linen(x, params), nnx_fn(x, nnx_params), rtol=1e-12, atol=1e-15)
    linen_dx, linen_dp = _grads(linen, x, params)
    nnx_dx, nnx_dp = _grads(nnx_fn, x, nnx_params)
    np.testing.assert_allclose(linen_dx, nnx_dx, rtol=1e-12, atol=1e-15)
    for name in params:
        np.testing.assert_allclose(
            linen_dp[name], nnx_dp[name][...], rtol=1e-12, atol=1e-15, err_msg=name
        )


@pytest.mark.parametrize("groups", [1, 3])
def test_nmf_conv(groups):
    x = _images(jax.random.key(1), (2, 8, 8, 6))
    options = dnmf.NMFOptions(iterations=4)
    linen = dnmf.NMFConv(6, 3, options=options, groups=groups, param_dtype=jnp.float64)
    ours = dnmf.nnx.NMFConv(
        6, 6, 3, options=options, groups=groups, param_dtype=jnp.float64, rngs=nnx.Rngs(0)
    )
    assert isinstance(ours.kernel, dnmf.nnx.NMFKernel)  # its own type: a filter for optimisers
    _assert_same(linen, ours, x, {}, {})


def test_patch_conv():
    x = _images(jax.random.key(2))
    linen = dnmf.PatchConv(4, 3, strides=2, param_dtype=jnp.float64)
    ours = dnmf.nnx.PatchConv(3, 4, 3, strides=2, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    _assert_same(linen, ours, x, {}, {})


def test_mix_1x1_that_changes_the_width():
    x = jax.random.normal(jax.random.key(3), (2, 4, 4, 6), jnp.float64)
    linen = dnmf.Mix1x1(features=9, groups=3, param_dtype=jnp.float64)
    ours = dnmf.nnx.Mix1x1(6, 9, groups=3, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    _assert_same(linen, ours, x, {}, {})


def test_batch_norm_with_batch_and_population_statistics():
    x = 2 + jax.random.normal(jax.random.key(4), (5, 3, 3, 4), jnp.float64)
    linen = dnmf.BatchNorm(param_dtype=jnp.float64)
    ours = dnmf.nnx.BatchNorm(4, param_dtype=jnp.float64)
    _assert_same(linen, ours, x, {"train": True}, {})
    mean, var = jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([0.5, 1.0, 2.0, 4.0])
    ours.set_population(mean, var)
    ours.eval()  # NNX's convention: use_running_average -> the population statistics
    assert ours.use_running_average
    variables = {"params": {"scale": ours.scale[...], "bias": ours.bias[...]}}
    expected = linen.apply({**variables, "population": {"mean": mean, "var": var}}, x, train=False)
    np.testing.assert_allclose(ours(x), expected, rtol=1e-6)
    np.testing.assert_allclose(ours(x[:1]), expected[:1], rtol=1e-6)  # one image alike
    ours.train()
    np.testing.assert_allclose(ours(x), linen.apply(variables, x, train=True), rtol=1e-12)


def test_nnx_needs_explicit_kernel_sizes():
    with pytest.raises(ValueError, match="kernel size when they are built"):
        dnmf.nnx.NMFConv(3, 4, "full", rngs=nnx.Rngs(0))
