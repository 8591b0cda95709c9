"""The NMF layer (deepnmf_jax.core): reference fixtures, hand-worked numbers, autodiff and finite differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from jax.test_util import check_grads

from deepnmf_jax import core as nmf
from deepnmf_jax.reference import parity
from tests.helpers import assert_close_to_reference, scaled_error

CASES = list(parity.LAYER_CASES)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
def test_layer_matches_reference_fixtures(layer_fixtures, case, dtype):
    out = parity.layer_fixture_outputs(layer_fixtures, case, dtype)
    for name, value in out.items():
        assert value.dtype == dtype
        assert_close_to_reference(value, layer_fixtures[f"{case}/{name}"], dtype, f"{case}/{name}")


def test_zero_patches_give_zero_codes_and_finite_gradients(layer_fixtures):
    case = "s75_i32_3x3_it20_zeropatch"
    out = parity.layer_fixture_outputs(layer_fixtures, case, np.float64)
    zero = np.all(layer_fixtures[f"{case}/x_raw"] == 0, axis=1)  # (N, H, W): all-zero patches
    assert zero.sum() == 12
    h, grad_x_raw = np.moveaxis(out["h"], 1, -1), np.moveaxis(out["grad_x_raw"], 1, -1)
    np.testing.assert_array_equal(h[zero], 0.0)
    np.testing.assert_array_equal(grad_x_raw[zero], 0.0)
    assert np.all(np.isfinite(out["grad_U"]))
    np.testing.assert_allclose(h[~zero].sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("gradient", ["unrolled", "implicit"])
def test_float32_zero_patches_give_finite_gradients_in_every_mode(layer_fixtures, gradient):
    """An all-zero patch has R = 1e-20, and R**2 underflows in float32: no derivative may square it."""
    case = "s75_i32_3x3_it20_zeropatch"
    x_raw = jnp.asarray(np.moveaxis(layer_fixtures[f"{case}/x_raw"], 1, -1), jnp.float32)
    u = jnp.asarray(layer_fixtures[f"{case}/U"].T, jnp.float32)
    g = jnp.asarray(np.moveaxis(layer_fixtures[f"{case}/g"], 1, -1), jnp.float32)

    def objective(x_raw, u):
        x, w = nmf.l1_normalize(x_raw), nmf.normalize_weight(u)
        return jnp.sum(g * nmf.nmf_fixed_point(x, w, iterations=20, backward=gradient))

    grad_x_raw, grad_u = jax.jit(jax.grad(objective, (0, 1)))(x_raw, u)
    assert bool(jnp.all(jnp.isfinite(grad_x_raw))) and bool(jnp.all(jnp.isfinite(grad_u)))
    zero = np.all(np.asarray(x_raw) == 0, axis=-1)
    np.testing.assert_array_equal(np.asarray(grad_x_raw)[zero], 0.0)


def test_normalize_weight_by_hand():
    u = jnp.array([[1.0, -2.0], [3.0, 0.0]])
    np.testing.assert_allclose(nmf.normalize_weight(u), [[0.25, 1.0], [0.75, 0.0]], rtol=1e-15)
    # d/du of |u| is 0 at an exact zero (torch's convention), and the column's other entry gets
    # d/du [|u| / (|u| + 2)] = 2/(2)^2 * sign = ... computed by hand for the objective sum(W * c).
    c = jnp.array([[0.0, 1.0], [0.0, 5.0]])
    grad = jax.grad(lambda u: jnp.sum(nmf.normalize_weight(u) * c))(u)
    # column 1: a = (2, 0), S = 2; dW_00/du_00 etc. -> dL/du_01 = sign(-2) (c_01 - sum_t c_t1 W_t1)/S
    #           = -(1 - 1) / 2 = 0; dL/du_11 = sign(0) * ... = 0.
    np.testing.assert_allclose(grad[:, 1], [0.0, 0.0], atol=1e-15)
    assert (
        float(jax.grad(lambda v: jnp.sum(nmf.normalize_weight(v)[:, 1:] * c[:, 1:]))(u)[1, 1]) == 0
    )
    # An exact zero entry with a non-zero upstream gradient still gets exactly 0.
    c2 = jnp.array([[0.0, 1.0], [0.0, -3.0]])
    assert float(jax.grad(lambda v: jnp.sum(nmf.normalize_weight(v) * c2))(u)[1, 1]) == 0.0


def test_one_update_by_hand():
    # W columns (0.5, 0.5) and (1, 0); x = (1, 0); h0 = (1/2, 1/2):
    # R = W h = (0.75, 0.25); x / R = (4/3, 0); W^T (x/R) = (2/3, 4/3); h * that = (1/3, 2/3).
    w = jnp.array([[0.5, 1.0], [0.5, 0.0]])
    x = jnp.array([1.0, 0.0])
    h1 = nmf.nmf_fixed_point(x, w, iterations=1)
    np.testing.assert_allclose(h1, [1 / 3, 2 / 3], rtol=1e-15)
    # With W = identity the code equals x after one step and stays there.
    h = nmf.nmf_fixed_point(jnp.array([0.3, 0.7]), jnp.eye(2), iterations=3)
    np.testing.assert_allclose(h, [0.3, 0.7], rtol=1e-15)
    # Zero iterations return the start h = 1/I.
    np.testing.assert_array_equal(nmf.nmf_fixed_point(x, w, iterations=0), [0.5, 0.5])


def _numpy_forward(x, w, iterations, epsilon):
    """A NumPy transcription of the reference forward (NNMF2d.py:89)."""
    h = np.full(x.shape[:-1] + (w.shape[1],), 1.0 / w.shape[1])
    for _ in range(iterations):
        r = h @ w.T + 1e-20
        drive = (x / r) @ w
        h = h * drive if epsilon is None else h * (1 + epsilon * drive)
        h = h / (h.sum(-1, keepdims=True) + 1e-19)
    return h


@pytest.fixture(scope="module")
def small_problem():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(2, 3, 6))
    x[0, 1] = 0.0  # one all-zero position
    x = x / (x.sum(-1, keepdims=True) + 1e-19)
    w = rng.uniform(size=(6, 4))
    w = w / w.sum(0, keepdims=True)
    g = rng.normal(size=(2, 3, 4))
    return jnp.asarray(x), jnp.asarray(w), jnp.asarray(g)


@pytest.mark.parametrize("epsilon", [None, 0.5])
def test_forward_matches_numpy_transcription(small_problem, epsilon):
    x, w, _ = small_problem
    h = nmf.nmf_fixed_point(x, w, iterations=7, epsilon=epsilon)
    np.testing.assert_allclose(
        h, _numpy_forward(np.asarray(x), np.asarray(w), 7, epsilon), rtol=1e-13
    )


def test_approximate_vjp_is_one_update_at_the_fixed_h(small_problem):
    """The custom VJP equals the VJP of one un-renormalised update with h held fixed."""
    x, w, g = small_problem

    def approximate(x, w):
        return jnp.sum(g * nmf.nmf_fixed_point(x, w, iterations=20))

    def one_update(x, w):
        h = jax.lax.stop_gradient(nmf.nmf_fixed_point(x, w, iterations=20))
        return jnp.sum(g * h * ((x / (h @ w.T + 1e-20)) @ w))

    got = jax.grad(approximate, (0, 1))(x, w)
    want = jax.grad(one_update, (0, 1))(x, w)
    for a, b in zip(got, want, strict=True):
        assert scaled_error(a, b) < 1e-12


def test_local_learning_rules(small_problem):
    x, w, g = small_problem
    h = np.asarray(nmf.nmf_fixed_point(x, w, iterations=20))
    xn, wn = np.asarray(x), np.asarray(w)
    r = h @ wn.T
    want = {
        "local_kl": -np.einsum("pqs,pqi->si", xn / (r + 1e-20), h),
        "local_mse": -np.einsum("pqs,pqi->si", 2 * (xn - r), h),
    }
    grad_x_approx = jax.grad(lambda x: jnp.sum(g * nmf.nmf_fixed_point(x, w)))(x)
    for rule, expected in want.items():
        gx, gw = jax.grad(
            lambda x, w, rule=rule: jnp.sum(g * nmf.nmf_fixed_point(x, w, backward=rule)), (0, 1)
        )(x, w)
        np.testing.assert_allclose(gw, expected, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gx, grad_x_approx, rtol=1e-14)


def test_unrolled_gradient_passes_check_grads(small_problem):
    x, w, _ = small_problem
    x = x[1:]  # positive everywhere: finite differences stay in the domain
    f = lambda x, w: nmf.nmf_fixed_point(x, w, iterations=5, backward="unrolled")
    check_grads(f, (x, w), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-6)


def test_unrolled_remat_equals_unrolled(small_problem):
    x, w, g = small_problem

    def grads(remat):
        f = lambda x, w: jnp.sum(g * nmf.nmf_fixed_point(x, w, backward=nmf.Unrolled(remat=remat)))
        return jax.grad(f, (0, 1))(x, w)

    for a, b in zip(grads(False), grads(True), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-18)


def test_unrolled_differs_from_approximate(small_problem):
    x, w, g = small_problem
    grads = {
        mode: jax.grad(lambda w, m=mode: jnp.sum(g * nmf.nmf_fixed_point(x, w, backward=m)))(w)
        for mode in ("approximate", "unrolled")
    }
    assert scaled_error(grads["approximate"], grads["unrolled"]) > 0.1


@functools.partial(jax.jit, static_argnames=("iterations", "backward"))
def _objective_grads(x, w, g, iterations, backward):
    f = lambda x, w: jnp.sum(
        g * nmf.nmf_fixed_point(x, w, iterations=iterations, backward=backward)
    )
    return jax.grad(f, (0, 1))(x, w)


def test_implicit_gradient_matches_finite_differences_of_converged_loop():
    """The implicit gradient is the derivative of the limit: compare with central differences of a
    5000-iteration loop (converged to machine precision for this well-posed problem)."""
    rng = np.random.default_rng(0)
    w = rng.uniform(size=(10, 3))
    w /= w.sum(0, keepdims=True)
    h_true = rng.dirichlet(np.ones(3), size=4)
    x = h_true @ w.T + 0.01 * rng.uniform(size=(4, 10))
    x /= x.sum(-1, keepdims=True)
    g = rng.normal(size=(4, 3))
    x, w, g = (jnp.asarray(a) for a in (x, w, g))
    h = nmf.nmf_fixed_point(x, w, iterations=5000)
    assert float(jnp.max(jnp.abs(nmf.nmf_update(h, x, w) - h))) < 1e-14

    loss = jax.jit(lambda x, w: jnp.sum(g * nmf.nmf_fixed_point(x, w, iterations=5000)))
    eps = 1e-6

    def central_differences(which):
        base = [x, w]
        grad = np.zeros(base[which].shape)
        for index in np.ndindex(grad.shape):
            step = jnp.zeros(grad.shape).at[index].set(eps)
            plus, minus = list(base), list(base)
            plus[which] = base[which] + step
            minus[which] = base[which] - step
            grad[index] = (loss(*plus) - loss(*minus)) / (2 * eps)
        return grad

    implicit = _objective_grads(x, w, g, iterations=5000, backward="implicit")
    for which in (0, 1):
        assert scaled_error(implicit[which], central_differences(which)) < 1e-8
    # After convergence the unrolled gradient agrees too, and the approximate one does not.
    unrolled = _objective_grads(x, w, g, iterations=5000, backward="unrolled")
    approximate = _objective_grads(x, w, g, iterations=5000, backward="approximate")
    assert scaled_error(unrolled[1], implicit[1]) < 1e-8
    assert scaled_error(approximate[1], implicit[1]) > 0.1


def test_implicit_gradient_is_zero_for_zero_input(small_problem):
    x, w, g = small_problem
    gx, gw = _objective_grads(x, w, g, iterations=20, backward="implicit")
    np.testing.assert_array_equal(gx[0, 1], 0.0)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))


def test_jit_equals_eager_and_vmap_equals_loop(small_problem):
    x, w, g = small_problem
    eager = _objective_grads.__wrapped__(x, w, g, 20, "approximate")
    jitted = _objective_grads(x, w, g, iterations=20, backward="approximate")
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-20)

    ws = jnp.stack([w, w[::-1] / jnp.sum(w[::-1], 0, keepdims=True)])
    f = lambda w: nmf.nmf_fixed_point(x, w)
    batched = jax.vmap(f)(ws)
    looped = jnp.stack([f(w_) for w_ in ws])
    np.testing.assert_allclose(batched, looped, rtol=1e-13)
    batched_grads = jax.vmap(lambda w: jax.grad(lambda w: jnp.sum(g * f(w)))(w))(ws)
    for k in range(2):
        np.testing.assert_allclose(
            batched_grads[k], jax.grad(lambda w: jnp.sum(g * f(w)))(ws[k]), rtol=1e-12
        )


@pytest.mark.parametrize("gradient", ["approximate", "unrolled", "implicit"])
def test_composes_with_jax_checkpoint(small_problem, gradient):
    x, w, g = small_problem
    f = lambda x, w: jnp.sum(g * nmf.nmf_fixed_point(x, w, iterations=6, backward=gradient))
    for a, b in zip(
        jax.grad(f, (0, 1))(x, w), jax.grad(jax.checkpoint(f), (0, 1))(x, w), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)


def test_no_recompilation_for_same_shapes(small_problem):
    x, w, _ = small_problem
    f = jax.jit(lambda x, w: nmf.nmf_fixed_point(x, w, iterations=3))
    f(x, w)
    f(x * 0.5, w[::-1])
    assert f._cache_size() == 1
    f(x[:1], w)
    assert f._cache_size() == 2  # a new shape does compile


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_run_in_float32_without_nan(small_problem, dtype):
    x, w, g = small_problem
    h = nmf.nmf_fixed_point(x.astype(dtype), w.astype(dtype))
    assert h.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(h)))
    np.testing.assert_allclose(
        np.asarray(h, np.float64), nmf.nmf_fixed_point(x, w), atol=2e-2, rtol=0
    )
    gx, gw = jax.grad(
        lambda x, w: jnp.sum(g.astype(dtype) * nmf.nmf_fixed_point(x, w)).astype(jnp.float32),
        (0, 1),
    )(x.astype(dtype), w.astype(dtype))
    assert bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.all(jnp.isfinite(gw)))


def test_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(6, 4\)"):
        nmf.nmf_fixed_point(jnp.ones((2, 5)), jnp.ones((6, 4)))
    with pytest.raises(ValueError, match=r"\(6, 4, 1\)"):
        nmf.nmf_fixed_point(jnp.ones((2, 6)), jnp.ones((6, 4, 1)))
    with pytest.raises(ValueError, match="backward must be one of"):
        nmf.nmf_fixed_point(jnp.ones((2, 6)), jnp.ones((6, 4)), backward="full")
    with pytest.raises(ValueError, match="iterations"):
        nmf.nmf_fixed_point(jnp.ones((2, 6)), jnp.ones((6, 4)), iterations=-1)
    with pytest.raises(ValueError, match="remat"):
        nmf.backward_from_name("approximate", remat=True)
    with pytest.raises(ValueError, match=r"LocalRule\.kind"):
        nmf.LocalRule("l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unroll"):
        nmf.NMFOptions(unroll=0)
    with pytest.raises(ValueError, match="floating"):
        nmf.nmf_fixed_point(jnp.ones((2, 6), jnp.int32), jnp.ones((6, 4)))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        nmf.normalize_weight(jnp.ones(3))


def test_checked_mode_names_the_layer(small_problem):
    x, w, _ = small_problem
    f = jax.jit(lambda x, w: nmf.nmf_fixed_point(x, w, check_inputs=True, name="block2/a"))
    checked = nmf.checked(f)
    np.testing.assert_allclose(checked(x, w), nmf.nmf_fixed_point(x, w), rtol=1e-15)
    with pytest.raises(checkify.JaxRuntimeError, match=r"'block2/a'.*negative"):
        checked(x.at[0, 0, 0].set(-0.5), w)
    with pytest.raises(checkify.JaxRuntimeError, match=r"'block2/a'.*non-finite"):
        checked(x.at[1, 2, 3].set(jnp.nan), w)
    with pytest.raises(checkify.JaxRuntimeError, match=r"weight W has negative"):
        checked(x, -w)


def test_num_chunks_by_hand():
    # (2 S + 2 I) * itemsize = (150 + 64) * 4 = 856 bytes a position.
    assert nmf.num_chunks(1000, 75, 32, 4, 856 * 250) == 4
    assert nmf.num_chunks(1000, 75, 32, 4, 856 * 300) == 3  # 3.33 rounds to 3 chunks of 334
    assert nmf.num_chunks(1000, 75, 32, 4, 856 * 1500) == 1  # 0.67 rounds up to one piece
    assert nmf.num_chunks(3, 75, 32, 4, 1) == 3  # never more chunks than positions
    assert nmf.num_chunks(10**6, 75, 32, 4, 0) == 1  # 0 disables


@pytest.mark.parametrize("gradient", ["approximate", "unrolled", "implicit", "local_kl"])
def test_chunked_loop_equals_one_piece_in_every_gradient_mode(getkey, gradient):
    """Positions are independent: chunks (with a padded last one) give the same h and gradients.

    In float64: the implicit gradient solves an ill-conditioned linear system, which turns float32's
    different summation orders (one piece or chunks, AVX2 or AVX-512) into relative differences
    near 1e-3."""
    x = nmf.l1_normalize(jax.random.uniform(getkey(), (7, 5, 12), jnp.float64))  # 35 positions
    x = x.at[0, 0].set(0.0)  # an all-zero position, in a chunk of its own rows
    u = jax.random.uniform(getkey(), (12, 6), jnp.float64)
    g = jax.random.normal(getkey(), (7, 5, 6), jnp.float64)
    itemsize_per_position = (2 * 12 + 2 * 6) * 8

    def run(chunk_bytes):
        def objective(x, u):
            h = nmf.nmf_fixed_point(
                x, nmf.normalize_weight(u), iterations=6, backward=gradient, chunk_bytes=chunk_bytes
            )
            return jnp.sum(g * h), h

        return jax.jit(jax.grad(objective, (0, 1), has_aux=True))(x, u)

    assert nmf.num_chunks(35, 12, 6, 8, 8 * itemsize_per_position) == 4  # 4 chunks of 9, 1 padded
    (gx, gu), h = run(8 * itemsize_per_position)
    (gx1, gu1), h1 = run(0)
    np.testing.assert_allclose(h, h1, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gx, gx1, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(gu, gu1, rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(h[0, 0], 0.0)


@pytest.mark.parametrize("unroll", [True, 2, 3])
def test_unrolled_loop_gives_the_rolled_values_and_gradients(small_problem, unroll):
    """``NMFOptions.unroll`` (what the GPU loop variants use) changes how the loop is compiled,
    not what it computes: the same codes and the same approximate and unrolled gradients."""
    x, w, g = small_problem

    def values(unroll, backward):
        f = lambda x, w: jnp.sum(
            g * nmf.nmf_fixed_point(x, w, iterations=7, unroll=unroll, backward=backward)
        )
        return (nmf.nmf_fixed_point(x, w, iterations=7, unroll=unroll), *jax.grad(f, (0, 1))(x, w))

    for backward in ("approximate", "unrolled"):
        for a, b in zip(values(False, backward), values(unroll, backward), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_backward_rules_are_objects_and_names_alike():
    assert nmf.NMFOptions(backward="unrolled").backward == nmf.Unrolled()
    assert nmf.NMFOptions(backward="local_mse").backward == nmf.LocalRule("mse")
    assert nmf.NMFOptions(backward=nmf.Implicit()).gradient == "implicit"
    assert [nmf.backward_from_name(n).name for n in nmf.BACKWARD_NAMES] == list(nmf.BACKWARD_NAMES)
    assert nmf.backward_from_name("unrolled", remat=True) == nmf.Unrolled(remat=True)


def test_inputs_pad_to_a_multiple_of_sixteen_on_a_cpu_by_default():
    """S = 75 (the paper's first layer) runs as 80 inputs on a CPU, S = 80 as itself, and
    ``pad_inputs=0`` not at all: the loop's products are (P, 80) x (80, 32) after padding."""

    def pads(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pad":
                yield tuple(eqn.outvars[0].aval.shape)
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns"):
                    yield from pads(inner)

    def input_widths(s, **options):
        x, w = jnp.ones((4, s)) / s, jnp.ones((s, 32)) / s
        return set(pads(jax.make_jaxpr(lambda x, w: nmf.nmf_fixed_point(x, w, **options))(x, w)))

    assert jax.default_backend() == "cpu"
    assert input_widths(75) == {(4, 80), (80, 32)}
    assert input_widths(80) == set()
    assert input_widths(75, pad_inputs=0) == set()
    assert input_widths(75, pad_inputs=1) == set()
    assert input_widths(75, pad_inputs=8) == {(4, 80), (80, 32)}
    assert input_widths(75, pad_inputs=32) == {(4, 96), (96, 32)}
    with pytest.raises(ValueError, match="pad_inputs must be None or >= 0, got -1"):
        nmf.NMFOptions(pad_inputs=-1)


@pytest.mark.parametrize("gradient", ["approximate", "unrolled", "implicit", "local_kl"])
def test_padded_inputs_give_the_same_codes_and_gradients_in_every_mode(small_problem, gradient):
    """Zero inputs and zero rows of W change neither h nor the gradients of the real inputs (S = 6
    padded to 16), also at an all-zero position; the padding's own gradients are dropped."""
    x, w, g = small_problem

    def run(pad_inputs):
        def objective(x, w):
            h = nmf.nmf_fixed_point(x, w, iterations=7, backward=gradient, pad_inputs=pad_inputs)
            return jnp.sum(g * h), h

        return jax.jit(jax.grad(objective, (0, 1), has_aux=True))(x, w)

    (gx, gw), h = run(16)
    (gx0, gw0), h0 = run(0)
    assert gx.shape == x.shape and gw.shape == w.shape
    np.testing.assert_allclose(h, h0, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(gx, gx0, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(gw, gw0, rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(h[0, 1], 0.0)
    assert bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.all(jnp.isfinite(gw)))
