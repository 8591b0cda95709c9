"""APGD-CE (deepnmf_jax.evaluation.apgd): its checkpoints against the paper's p_j, and its steps,
step halving and returned images on a linear model worked out by hand; ``deepnmf attack --method
apgd`` on a trained run is in tests/test_attack.py."""

import jax
import jax.numpy as jnp
import numpy as np

from deepnmf_jax.evaluation import apgd


def test_checkpoints_are_the_papers():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): for N = 100 the checks
    # fall after steps 22, 41, 57, 70, 80, 87, 93 and 99 (1-based)
    assert (np.flatnonzero(apgd.checkpoints(100)) + 1).tolist() == [22, 41, 57, 70, 80, 87, 93, 99]
    # N = 20: windows of 4, 3, 2, then 1 step (AutoAttack's integer rounding of 0.22 N, 0.03 N, 0.06 N)
    assert (np.flatnonzero(apgd.checkpoints(20)) + 1).tolist() == [4, 7, 9, *range(10, 21)]


def test_linear_model_worked_out_by_hand():
    """Loss -log softmax([a.x, 0])_0 falls as a.x grows: its gradient has the sign of -a, so the
    first step of 2 eps reaches the corner x - eps sign(a) from any start, and the momentum only
    pushes further out, which the projection undoes. From there the loss never rises again: with
    a checkpoint after every step (N = 8), every review from the second on halves the step."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(1, 4, 4, 3)))
    images = jnp.asarray(rng.uniform(0.2, 0.8, (6, 4, 4, 3)))
    labels_zero = jnp.zeros(6, jnp.int32)
    eps = 0.03

    def loss_fn(x):
        score = jnp.sum(x * a, axis=(1, 2, 3))
        logits = jnp.stack([score, jnp.zeros_like(score)], -1)
        loss = -jax.nn.log_softmax(logits)[:, 0]
        return loss, jnp.argmax(logits, -1).astype(labels_zero.dtype) == labels_zero

    assert apgd.checkpoints(8).all()
    found = apgd.apgd(loss_fn, images, jax.random.key(1), jnp.asarray(eps), 8)
    corner = images - eps * jnp.sign(a)
    np.testing.assert_allclose(found.best, corner, atol=1e-12)
    np.testing.assert_allclose(found.best_loss, loss_fn(corner)[0], rtol=1e-12)
    np.testing.assert_allclose(found.step, 2 * eps / 2**7, rtol=1e-12)
    # broken exactly where the corner is misclassified; those return the corner, the others their
    # start, on the ball's surface (its largest move is eps)
    fooled = ~loss_fn(corner)[1]
    assert 0 < int(fooled.sum()) < 6  # both kinds present
    np.testing.assert_array_equal(found.fooled, fooled)
    np.testing.assert_allclose(found.adversarial[fooled], corner[fooled], atol=1e-12)
    moved = jnp.max(jnp.abs(found.adversarial - images), axis=(1, 2, 3))
    np.testing.assert_allclose(moved, eps, rtol=1e-9)


def test_eps_zero_changes_nothing_and_stays_in_the_unit_box():
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.uniform(0.0, 1.0, (3, 2, 2, 1))).at[:, 0].set(1.0)

    def loss_fn(x):
        return jnp.sum(x**2, axis=(1, 2, 3)), jnp.ones(x.shape[0], bool)

    for radius in (0.0, 0.2):
        found = apgd.apgd(loss_fn, images, jax.random.key(0), jnp.asarray(radius), 5)
        for x in (found.adversarial, found.best):
            assert float(jnp.max(jnp.abs(x - images))) <= radius + 1e-12
            assert float(x.min()) >= 0 and float(x.max()) <= 1
