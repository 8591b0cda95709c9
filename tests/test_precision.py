"""Mixed precision (model.precision): bfloat16 products in the NMF loops, everything else float32."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepnmf_jax import core as nmf
from deepnmf_jax import errors
from deepnmf_jax.reference import parity
from deepnmf_jax.training import loop as train_lib
from deepnmf_jax.training.config import from_any
from tests.helpers import assert_close_to_reference, scaled_error
from tests.test_models import _fixture
from tests.test_nmf import CASES
from tests.test_train import tiny_config

BFLOAT16_FORWARD_TOL = 2e-2
"""Stated bound on the scaled error (max|new - ref| / max|ref|) of bfloat16 forwards against the
float64 reference; measured up to 8.7e-3 on the layer fixtures."""


@pytest.mark.parametrize("case", CASES)
def test_bfloat16_layer_forward_within_the_stated_tolerance(layer_fixtures, case):
    out = parity.layer_fixture_outputs(layer_fixtures, case, np.float32, precision="bfloat16")
    assert out["h"].dtype == np.float32  # the codes stay float32
    error = scaled_error(out["h"], layer_fixtures[f"{case}/h"])
    assert error <= BFLOAT16_FORWARD_TOL, error
    assert error > 1e-5  # it really rounds the products: float32 alone stays below 2e-6
    for name, value in out.items():
        assert np.all(np.isfinite(value)), name


@pytest.mark.parametrize("case", CASES)
def test_tf32_on_cpu_is_float32(layer_fixtures, case):
    out = parity.layer_fixture_outputs(layer_fixtures, case, np.float32, precision="tf32")
    for name, value in out.items():
        assert_close_to_reference(value, layer_fixtures[f"{case}/{name}"], np.float32, name)


@pytest.mark.parametrize("gradient", ["approximate", "unrolled"])
def test_bfloat16_zero_patches_give_zero_codes_and_finite_gradients(layer_fixtures, gradient):
    case = "s75_i32_3x3_it20_zeropatch"
    x_raw = jnp.asarray(np.moveaxis(layer_fixtures[f"{case}/x_raw"], 1, -1), jnp.float32)
    u = jnp.asarray(layer_fixtures[f"{case}/U"].T, jnp.float32)

    def objective(x_raw, u):
        h = nmf.nmf_fixed_point(
            nmf.l1_normalize(x_raw),
            nmf.normalize_weight(u),
            backward=gradient,
            precision="bfloat16",
        )
        return jnp.sum(h * h), h

    (gx, gu), h = jax.jit(jax.grad(objective, (0, 1), has_aux=True))(x_raw, u)
    zero = np.all(np.asarray(x_raw) == 0, axis=-1)
    assert zero.sum() == 12
    np.testing.assert_array_equal(np.asarray(h)[zero], 0.0)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in (h, gx, gu))


def test_bfloat16_model_forward_within_the_stated_tolerance():
    fixture = _fixture("cnmf_1x1")
    out = parity.model_fixture_outputs("cnmf_1x1", fixture, np.float32, precision="bfloat16")
    for key in ("output/probs", "act/block1.out", "act/block2.out"):
        error = scaled_error(out[key], fixture[key])
        assert error <= BFLOAT16_FORWARD_TOL, (key, error)
    assert all(np.all(np.isfinite(v)) for v in out.values())


def test_precision_is_validated():
    with pytest.raises(ValueError, match="precision must be one of"):
        nmf.nmf_fixed_point(jnp.ones((2, 3)) / 3, jnp.ones((3, 2)) / 3, precision="fp8")
    with pytest.raises(errors.ConfigError, match=r"config\.model\.precision"):
        from_any(tiny_config(**{"model.precision": "half"}))


def test_short_bfloat16_training_is_within_the_seed_spread_of_float32(tmp_path):
    """2 epochs of CNMF on 500 sample images, 3 seeds each: the mean test accuracies of the two
    precisions differ by less than the seed spread (plus 3 points: 250 test images). (Measured:
    float32 22.4 / 22.0 / 24.4 %, bfloat16 22.0 / 22.0 / 24.4 %.)"""
    accuracy = {}
    for precision in ("float32", "bfloat16"):
        config = tiny_config(
            **{
                "model.name": "cnmf",
                "model.precision": precision,
                "model.width": 0.25,
                "model.iterations": 5,
                "num_seeds": 3,
                "num_epochs": 2,
                "batch_size": 50,
                "eval_batch_size": 50,
                "data.train_limit": 500,
                "data.test_limit": 250,
                "tensorboard": False,
            }
        )
        train_lib.train_and_evaluate(config, tmp_path / precision)
        results = json.loads((tmp_path / precision / "results.json").read_text())
        accuracy[precision] = [s["final_test_accuracy"] for s in results["per_seed"]]
    f32, bf16 = (np.asarray(accuracy[p]) for p in ("float32", "bfloat16"))
    assert f32.mean() > 0.15 and bf16.mean() > 0.15, accuracy  # both learn (chance: 0.10)
    spread = max(f32.max() - f32.min(), bf16.max() - bf16.min())
    assert abs(f32.mean() - bf16.mean()) <= spread + 0.03, accuracy
