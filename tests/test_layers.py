"""Layers (deepnmf_jax.layers) and losses (deepnmf_jax.losses): definitions checked by hand and by oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepnmf_jax import core as nmf
from deepnmf_jax.core import patches
from deepnmf_jax.models import losses
from deepnmf_jax.nn import linen as layers


@pytest.mark.parametrize(
    "kernel_size,strides,padding", [(5, 1, 0), ((2, 3), (2, 1), 1), ("full", 1, 0), (1, 1, 0)]
)
def test_patches_by_slices_equal_conv_general_dilated_patches(
    getkey, kernel_size, strides, padding
):
    x = jax.random.uniform(getkey(), (2, 7, 6, 3), jnp.float64)
    slices = nmf.extract_patches(x, kernel_size, strides, padding, method="slices")
    conv = nmf.extract_patches(x, kernel_size, strides, padding, method="conv")
    assert slices.shape == conv.shape
    np.testing.assert_array_equal(slices, conv)


def test_patch_feature_order_is_channel_major_like_torch_unfold():
    # x[n, h, w, c] = 100 c + 10 h + w: a 2x2 patch at (0, 0) reads c-major (c, ki, kj).
    h, w, c = np.meshgrid(np.arange(3), np.arange(3), np.arange(2), indexing="ij")
    x = jnp.asarray((100 * c + 10 * h + w)[None], jnp.float64)
    patch = nmf.extract_patches(x, 2)[0, 0, 0]
    np.testing.assert_array_equal(patch, [0, 1, 10, 11, 100, 101, 110, 111])


def test_patch_errors():
    with pytest.raises(ValueError, match="larger than the padded input"):
        nmf.extract_patches(jnp.ones((1, 4, 4, 1)), 5)
    with pytest.raises(ValueError, match="rank 4"):
        nmf.extract_patches(jnp.ones((4, 4, 1)), 2)


def test_grouped_nmf_is_per_group_nmf_concatenated_and_renormalised(getkey):
    x = jax.random.uniform(getkey(), (2, 3, 3, 4), jnp.float64)
    layer = layers.NMFConv(
        features=6, kernel_size=1, groups=2, options=nmf.NMFOptions(iterations=5)
    )
    variables = layer.init(getkey(), x)
    u = variables["params"]["kernel"]
    assert u.shape == (2, 2, 3)
    out = layer.apply(variables, x)
    parts = [
        nmf.nmf_fixed_point(
            nmf.l1_normalize(x[..., 2 * g : 2 * g + 2]), nmf.normalize_weight(u[g]), iterations=5
        )
        for g in range(2)
    ]
    np.testing.assert_allclose(out, jnp.concatenate(parts, -1) / 2, rtol=1e-14)


def test_nmf_conv_probes_and_sown_input(getkey):
    x = jax.random.uniform(getkey(), (2, 4, 4, 3), jnp.float64)
    layer = layers.NMFConv(
        features=5, kernel_size=2, options=nmf.NMFOptions(iterations=4), probes=True
    )
    variables = layer.init(getkey(), x)
    params, probes = variables["params"], variables["perturbations"]
    g = jax.random.normal(getkey(), (2, 3, 3, 5), jnp.float64)

    def loss(probes):
        codes, state = layer.apply(
            {"params": params, "perturbations": probes}, x, mutable=["intermediates"]
        )
        return jnp.sum(g * codes), state["intermediates"]["nmf_input"][0]

    grads, nmf_input = jax.grad(loss, has_aux=True)(probes)
    np.testing.assert_allclose(nmf_input, nmf.l1_normalize(nmf.extract_patches(x, 2)), rtol=1e-15)
    w = nmf.normalize_weight(params["kernel"]).astype(jnp.float64)
    expected = jax.grad(lambda x_: jnp.sum(g * nmf.nmf_fixed_point(x_, w, iterations=4)))(nmf_input)
    np.testing.assert_allclose(grads["nmf_input"], expected, rtol=1e-13)
    np.testing.assert_allclose(grads["codes"], g, rtol=1e-15)  # dL/dh
    assert "perturbations" not in layers.NMFConv(5, 2).init(getkey(), x)  # off by default


def test_patch_conv_is_linear_map_of_l1_normalised_patches_with_torch_init(getkey):
    x = jax.random.uniform(getkey(), (2, 6, 6, 3), jnp.float64)
    layer = layers.PatchConv(features=4, kernel_size=3)
    variables = layer.init(getkey(), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    bound = 1 / np.sqrt(27)
    assert kernel.shape == (27, 4) and float(jnp.max(jnp.abs(kernel))) <= bound
    assert float(jnp.max(jnp.abs(bias))) <= bound and float(jnp.std(kernel)) > bound / 3
    patches = nmf.extract_patches(x, 3)
    expected = patches / patches.sum(-1, keepdims=True) @ kernel.astype(jnp.float64)
    expected = expected + bias.astype(jnp.float64)[None, None, None]
    np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-13)
    # normalize=False: the same parameters, a plain convolution of the raw patches (any sign)
    plain = layers.PatchConv(features=4, kernel_size=3, normalize=False)
    signed = x - 0.5
    expected = patches @ kernel.astype(jnp.float64) + bias.astype(jnp.float64)[None, None, None]
    np.testing.assert_allclose(plain.apply(variables, x), expected, rtol=1e-13)
    np.testing.assert_allclose(
        plain.apply(variables, signed) - bias.astype(jnp.float64)[None, None, None],
        nmf.extract_patches(signed, 3) @ kernel.astype(jnp.float64),
        rtol=1e-12,
        atol=1e-14,
    )


def test_mix1x1_starts_near_identity_on_rectified_normalised_input(getkey):
    x = jax.random.normal(getkey(), (2, 3, 3, 5), jnp.float64)
    layer = layers.Mix1x1()
    variables = layer.init(getkey(), x)
    kernel = variables["params"]["kernel"]
    assert float(jnp.max(jnp.abs(kernel - jnp.eye(5, dtype=kernel.dtype)))) <= 0.5e-4
    assert float(jnp.max(jnp.abs(variables["params"]["bias"]))) <= 0.5e-4
    relu = jnp.maximum(x, 0)
    np.testing.assert_allclose(
        layer.apply(variables, x), relu / relu.sum(-1, keepdims=True), atol=2e-4
    )


def test_batch_norm_modes(getkey):
    x = 3 + 2 * jax.random.normal(getkey(), (8, 2, 2, 3), jnp.float64)
    by_hand = (x - x.mean((0, 1, 2))[None, None, None]) / jnp.sqrt(x.var((0, 1, 2)) + 1e-5)[
        None, None, None
    ]

    batch = layers.BatchNorm("batch")
    variables = batch.init(getkey(), x, train=True)
    assert set(variables) == {"params"}  # the reference's mode keeps no state
    np.testing.assert_allclose(batch.apply(variables, x, train=False), by_hand, rtol=1e-12)

    running = layers.BatchNorm("running")
    variables = running.init(getkey(), x, train=True)
    out, updates = running.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out, by_hand, rtol=1e-12)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * x.mean((0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * x.var((0, 1, 2), ddof=1), rtol=1e-6)
    evaluated = running.apply({**variables, "batch_stats": stats}, x, train=False)
    mean, var = (np.asarray(stats[k], np.float64)[None, None, None] for k in ("mean", "var"))
    np.testing.assert_allclose(evaluated, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-6)


def test_batch_norm_population_statistics(getkey):
    """With a ``population`` collection, evaluation normalises every image by it (whatever its
    batch); training still uses the batch; and the batch's moments are put where asked."""
    x = 3 + 2 * jax.random.normal(getkey(), (8, 2, 2, 3), jnp.float64)
    norm = layers.BatchNorm("batch")
    params = norm.init(getkey(), x, train=True)
    population = {"mean": jnp.array([1.0, 2.0, 3.0]), "var": jnp.array([4.0, 1.0, 0.25])}
    variables = {**params, layers.POPULATION: population}
    by_hand = (x - population["mean"][None, None, None]) / jnp.sqrt(
        population["var"][None, None, None] + 1e-5
    )
    np.testing.assert_allclose(norm.apply(variables, x, train=False), by_hand, rtol=1e-12)
    one = norm.apply(variables, x[:1], train=False)  # one image: the same as in the batch
    np.testing.assert_allclose(one, by_hand[:1], rtol=1e-12)
    batch = norm.apply(params, x, train=True)
    np.testing.assert_allclose(norm.apply(variables, x, train=True), batch, rtol=1e-15)
    _, moments = norm.apply(params, x, train=False, mutable=[layers.MOMENTS])
    np.testing.assert_allclose(moments[layers.MOMENTS]["mean"], x.mean((0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(moments[layers.MOMENTS]["var"], x.var((0, 1, 2)), rtol=1e-12)


def test_reference_loss_by_hand():
    probs = jnp.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    labels = jnp.array([0, 2])
    kl = (-np.log(0.5) - np.log(0.8)) / 3
    mse = ((0.25 + 0.0625 + 0.0625) + (0.01 + 0.01 + 0.04)) / 3
    expected = (kl + 0.5 * mse) / 1.5
    np.testing.assert_allclose(losses.reference_loss(probs, labels), expected, rtol=1e-14)
    paper = np.mean([-np.log(0.5) + 0.5 * 0.375, -np.log(0.8) + 0.5 * 0.06])
    np.testing.assert_allclose(losses.paper_loss(probs, labels), paper, rtol=1e-14)
    np.testing.assert_allclose(
        losses.paper_loss(probs, labels),
        losses.reference_loss(probs, labels) * 1.5 * 3 / 2,
        rtol=1e-14,
    )
    # A zero probability stays finite thanks to the 1e-20 guard.
    assert np.isfinite(float(losses.reference_loss(jnp.array([[0.0, 1.0]]), jnp.array([0]))))


def test_label_smoothing_by_hand():
    """alpha = 0.3 over 2 classes: targets [0.85, 0.15] for label 0."""
    probs, labels = jnp.array([[0.6, 0.4]]), jnp.array([0])
    y = np.array([0.85, 0.15])
    kl = np.sum(y * np.log(y / np.array([0.6, 0.4]))) / 2
    mse = np.sum((np.array([0.6, 0.4]) - y) ** 2) / 2
    np.testing.assert_allclose(
        losses.reference_loss(probs, labels, label_smoothing=0.3),
        (kl + 0.5 * mse) / 1.5,
        rtol=1e-12,
    )
    paper = -np.sum(y * np.log([0.6, 0.4])) + 0.5 * np.sum((np.array([0.6, 0.4]) - y) ** 2)
    np.testing.assert_allclose(
        losses.paper_loss(probs, labels, label_smoothing=0.3), paper, rtol=1e-12
    )
    # At p = y the reference loss is zero (the KL keeps its y log y part).
    np.testing.assert_allclose(
        losses.reference_loss(jnp.array([y]), labels, label_smoothing=0.3), 0.0, atol=1e-15
    )
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        losses.reference_loss(probs, labels, label_smoothing=1.0)


def test_loss_errors():
    with pytest.raises(ValueError, match="integer"):
        losses.reference_loss(jnp.ones((2, 3)) / 3, jnp.ones((2,)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3,\)"):
        losses.reference_loss(jnp.ones((2, 3)) / 3, jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get_loss("kl")


@pytest.mark.parametrize(
    "kernel_size,strides,padding,groups",
    [(5, 1, 0, 1), (3, 2, 1, 1), ("full", 1, 0, 1), (3, 1, 0, 2), ("full", 1, 0, 4), (1, 1, 0, 1)],
)
def test_patch_conv_methods_are_equal_in_float64_with_zero_patches(
    getkey, kernel_size, strides, padding, groups
):
    """``W . (p / sum p) = (W . p) / sum p``: the matmul and conv forms equal the reference's patch
    form, forward and gradients, also where whole patches are zero."""
    x = jax.random.uniform(getkey(), (2, 9, 9, 4), jnp.float64)
    x = x.at[0, :6, :6, :].set(0.0)  # all-zero patches in the top-left corner
    g = jax.random.normal(getkey(), (2, 9, 9, 8), jnp.float64)
    results = {}
    for method in ("patches", "matmul", "conv"):
        layer = layers.PatchConv(8, kernel_size, strides, padding, groups=groups, method=method)
        variables = jax.jit(layer.init)(jax.random.key(0), x)
        variables = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), variables)

        def objective(variables, x, layer=layer):
            y = layer.apply(variables, x)
            return jnp.sum(g[:, : y.shape[1], : y.shape[2]] * y), y

        grads, y = jax.jit(jax.grad(objective, (0, 1), has_aux=True))(variables, x)
        results[method] = (y, grads, variables["params"]["bias"])
    reference_y, reference_grads, bias = results["patches"]
    if kernel_size != "full":  # the top-left patch is all zero: the output is the bias alone
        np.testing.assert_array_equal(reference_y[0, 0, 0], bias)
    for method in ("matmul", "conv"):
        y, grads, _ = results[method]
        np.testing.assert_allclose(y, reference_y, rtol=1e-12, atol=1e-14)
        for got, want in zip(
            jax.tree_util.tree_leaves(grads),
            jax.tree_util.tree_leaves(reference_grads),
            strict=True,
        ):
            assert bool(jnp.all(jnp.isfinite(got)))
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


def test_patch_sums_by_hand():
    x = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float64).reshape(1, 3, 3, 4)[..., :4]
    geometry = patches.patch_geometry(x.shape, 2)
    sums = patches.patch_sums(x, geometry, groups=2)  # (1, 2, 2, 2)
    expected = nmf.extract_patches(x, 2).reshape(1, 2, 2, 2, 8).sum(-1)
    np.testing.assert_array_equal(sums, expected)
    # top-left window, channels 0-1: x[0, :2, :2, :2] = (0 + 1) + (4 + 5) + (12 + 13) + (16 + 17)
    assert float(sums[0, 0, 0, 0]) == 68.0


def test_patch_conv_rejects_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        layers.PatchConv(4, 3, method="fft").init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))


def test_pixel_major_patches_by_hand():
    # x[n, h, w, c] = 100 c + 10 h + w: the 2x2 patch at (0, 0), pixel by pixel, channels within.
    h, w, c = np.meshgrid(np.arange(3), np.arange(3), np.arange(2), indexing="ij")
    x = jnp.asarray((100 * c + 10 * h + w)[None], jnp.float64)
    geometry = patches.patch_geometry(x.shape, 2)
    patch = patches.pixel_major_patches(x, geometry)[0, 0, 0]
    np.testing.assert_array_equal(patch, [[0, 100, 1, 101, 10, 110, 11, 111]])
    # two groups of one channel: each group's window on its own
    grouped = patches.pixel_major_patches(x, geometry, groups=2)[0, 0, 0]
    np.testing.assert_array_equal(grouped, [[0, 1, 10, 11], [100, 101, 110, 111]])


@pytest.mark.parametrize(
    "kernel_size,strides,padding,groups",
    [(5, 1, 0, 1), ((2, 3), (2, 1), 1, 2), ("full", 1, 0, 4), (1, 1, 0, 1)],
)
def test_pixel_major_patches_are_the_patches_moved_and_the_kernel_moves_alike(
    getkey, kernel_size, strides, padding, groups
):
    x = jax.random.uniform(getkey(), (2, 7, 6, 4), jnp.float64)
    geometry = patches.patch_geometry(x.shape, kernel_size, strides, padding)
    channel_major = nmf.extract_patches(x, kernel_size, strides, padding)
    pixel_major = patches.pixel_major_patches(x, geometry, groups)
    np.testing.assert_array_equal(
        patches.pixel_major_to_channel_major(pixel_major, 4), channel_major
    )
    np.testing.assert_array_equal(
        patches.channel_major_to_pixel_major(channel_major, 4, groups), pixel_major
    )
    s = channel_major.shape[-1]
    kernel = jax.random.normal(getkey(), patches.kernel_shape(s, 6 * groups, groups), jnp.float64)
    moved = patches.pixel_major_kernel(kernel, 4, geometry.kernel)
    np.testing.assert_allclose(
        patches.grouped_linear(pixel_major.reshape(channel_major.shape), moved),
        patches.grouped_linear(channel_major, kernel),
        rtol=1e-13,
        atol=1e-14,
    )


@pytest.mark.parametrize(
    "kernel_size,strides,padding,groups",
    [(5, 1, 0, 1), (3, 2, 1, 2), ("full", 1, 0, 1), ((2, 3), (2, 1), 1, 4), (1, 1, 0, 1)],
)
def test_nmf_conv_is_the_reference_composition_in_float64_with_zero_patches(
    getkey, kernel_size, strides, padding, groups
):
    """Pixel-major patches normalised by box sums, W's rows moved to match: the reference's
    channel-major patches, each L1-normalised, through the NMF (per group, renormalised), forward
    and gradients, also where whole patches are zero."""
    x = jax.random.uniform(getkey(), (2, 9, 8, 8), jnp.float64)
    x = x.at[0, :5, :5].set(0.0)
    layer = layers.NMFConv(8, kernel_size, strides, padding, groups=groups)
    variables = jax.tree_util.tree_map(
        lambda v: v.astype(jnp.float64), layer.init(jax.random.key(0), x)
    )
    u = variables["params"]["kernel"]
    options = layer.options

    def reference(x, u):
        features = patches.split_groups(
            nmf.extract_patches(x, kernel_size, strides, padding), groups
        )
        w = nmf.normalize_weight(u)
        w = w if groups > 1 else w[None]
        codes = [
            nmf.nmf_fixed_point(nmf.l1_normalize(features[..., g, :]), w[g], options)
            for g in range(groups)
        ]
        return nmf.l1_normalize(jnp.concatenate(codes, -1)) if groups > 1 else codes[0]

    def ours(x, u):
        return layer.apply({"params": {"kernel": u}}, x)

    g = jax.random.normal(getkey(), reference(x, u).shape, jnp.float64)

    def objective(fn):
        return jax.grad(lambda x, u: jnp.sum(g * fn(x, u)), (0, 1))(x, u)

    np.testing.assert_allclose(ours(x, u), reference(x, u), rtol=1e-13, atol=1e-15)
    for got, want in zip(objective(ours), objective(reference), strict=True):
        assert bool(jnp.all(jnp.isfinite(got)))
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)
    if kernel_size != "full":
        np.testing.assert_array_equal(ours(x, u)[0, 0, 0], 0.0)  # an all-zero patch


def test_batch_normalize_backward_is_autodiffs_in_float64(getkey):
    """The one-pass backward of ``batch_normalize`` against autodiff of moments and normalize, with
    cotangents on all three outputs (y, mean, var)."""
    from deepnmf_jax.nn import _batch_norm as bn

    x = 3.0 + jax.random.normal(getkey(), (4, 3, 5, 6), jnp.float64)
    scale = jax.random.normal(getkey(), (6,), jnp.float64)
    bias = jax.random.normal(getkey(), (6,), jnp.float64)
    cotangents = (
        jax.random.normal(getkey(), x.shape, jnp.float64),
        jax.random.normal(getkey(), (6,), jnp.float64),
        jax.random.normal(getkey(), (6,), jnp.float64),
    )

    def by_autodiff(x, scale, bias):
        mean, var = bn.moments(x)
        return bn.normalize(x, mean, var, scale, bias), mean, var

    outputs, pullback = jax.vjp(bn.batch_normalize, x, scale, bias)
    want_outputs, want_pullback = jax.vjp(by_autodiff, x, scale, bias)
    for got, want in zip(outputs, want_outputs, strict=True):
        np.testing.assert_array_equal(got, want)  # the same forward expression
    for got, want in zip(pullback(cotangents), want_pullback(cotangents), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


def test_batch_normalize_backward_by_hand():
    """A constant cotangent c on y: y sums to n * bias per channel whatever x is, so dx = 0,
    dbias = n c and dscale = c * sum(xhat) = 0. One channel, x = (0, 1, 2, 5): mean 2, var 3.5."""
    from deepnmf_jax.nn import _batch_norm as bn

    x = jnp.asarray([[0.0], [1.0], [2.0], [5.0]], jnp.float64)
    one = jnp.ones((1,), jnp.float64)
    (y, mean, var), pullback = jax.vjp(
        lambda x, s, b: bn.batch_normalize(x, s, b, 0.0), x, one, one
    )
    np.testing.assert_allclose(mean, [2.0])
    np.testing.assert_allclose(var, [3.5])
    np.testing.assert_allclose(y[:, 0], (np.array([0, 1, 2, 5]) - 2) / np.sqrt(3.5) + 1, rtol=1e-15)
    zero = jnp.zeros((1,), jnp.float64)
    dx, dscale, dbias = pullback((jnp.full_like(x, 0.5), zero, zero))
    np.testing.assert_allclose(dx, 0.0, atol=1e-15)
    np.testing.assert_allclose(dbias, [2.0])
    np.testing.assert_allclose(dscale, [0.0], atol=1e-15)
    # a cotangent on the mean alone: d mean / dx_i = 1/4
    dx, _, _ = pullback((jnp.zeros_like(x), one, zero))
    np.testing.assert_allclose(dx[:, 0], [0.25] * 4)
    # on the variance alone: d var / dx_i = 2 (x_i - mean) / 4
    dx, _, _ = pullback((jnp.zeros_like(x), zero, one))
    np.testing.assert_allclose(dx[:, 0], [-1.0, -0.5, 0.0, 1.5])
