"""model.train_iterations: training steps with fewer NMF iterations than the model has, in every
epoch or in the first train_iterations_epochs; evaluation keeps model.iterations."""

import json

import numpy as np
import pytest

from deepnmf_jax import errors
from deepnmf_jax.training import loop as train_lib
from deepnmf_jax.training import program as compiled
from deepnmf_jax.training.config import from_any
from tests.test_train import assert_trees_equal, final_state, tiny_config

# the plain CNMF (NMF layers in every block), 3 iterations in the model, 1 in training steps
BASE = {"model.name": "cnmf", "model.iterations": 3, "num_epochs": 2, "tensorboard": False}


def _train_losses(folder) -> list[float]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"][0] for line in lines]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three 2-epoch runs: 1 iteration in every training step of a 3-iteration model, in epoch 1
    only, and a 1-iteration model."""
    root = tmp_path_factory.mktemp("train_iterations")
    configs = {
        "few": {**BASE, "model.train_iterations": 1},
        "early": {**BASE, "model.train_iterations": 1, "model.train_iterations_epochs": 1},
        "small": {**BASE, "model.iterations": 1},
    }
    for name, overrides in configs.items():
        train_lib.train_and_evaluate(tiny_config(**overrides), root / name)
    return root


def test_fewer_iterations_train_like_the_smaller_model(runs):
    assert _train_losses(runs / "few") == _train_losses(runs / "small")
    assert_trees_equal(final_state(runs / "few"), final_state(runs / "small"))


def test_early_epochs_switch_to_the_models_iterations(runs):
    few, early = _train_losses(runs / "few"), _train_losses(runs / "early")
    assert early[0] == few[0]  # epoch 1: the same 1-iteration steps
    assert early[1] != few[1]  # epoch 2: 3 iterations (its loss is measured with them)


def test_evaluation_runs_the_models_iterations():
    """The predict function of a run that trains with 1 iteration is the 3-iteration model's."""
    steps = {
        name: compiled.build(tiny_config(**overrides), 10, (32, 32, 3), steps_per_epoch=6)
        for name, overrides in {
            "few": {**BASE, "model.train_iterations": 1},
            "model": BASE,
            "small": {**BASE, "model.iterations": 1},
        }.items()
    }
    placement = steps["model"].placement
    state = steps["model"].init(placement.seed_keys([21]))
    images = np.random.default_rng(0).uniform(0, 1, (25, 28, 28, 3)).astype(np.float32)
    probs = {name: np.asarray(s.predict(state, images)[0]) for name, s in steps.items()}
    np.testing.assert_array_equal(probs["few"], probs["model"])
    assert np.abs(probs["few"] - probs["small"]).max() > 1e-6


def test_train_for_picks_the_early_step():
    config = tiny_config(
        **{**BASE, "model.train_iterations": 1, "model.train_iterations_epochs": 2}
    )
    steps = compiled.build(config, 10, (32, 32, 3), steps_per_epoch=6)
    assert steps.early_epochs == 2
    assert steps.train_for(1) is steps.train_for(2) is steps.train_early
    assert steps.train_for(3) is steps.train is not steps.train_early
    same = compiled.build(
        tiny_config(**{**BASE, "model.train_iterations": 3}), 10, (32, 32, 3), steps_per_epoch=6
    )
    assert same.train_early is None  # train_iterations = model.iterations: nothing to switch


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.train_iterations": -1}, r"config\.model\.train_iterations must be >= 0, got -1"),
        (
            {"model.name": "cnn_1x1", "model.train_iterations": 5},
            r"train_iterations = 5 sets the NMF iterations .* 'cnn_1x1' has no NMF layer",
        ),
        (
            {"model.train_iterations_epochs": 4},
            r"train_iterations_epochs = 4 needs config\.model\.train_iterations > 0",
        ),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(errors.ConfigError, match=message):
        from_any(tiny_config(**overrides))


def test_runs_saved_before_the_option_read_as_without_it():
    saved = json.loads(tiny_config().to_json())
    for key in ("train_iterations", "train_iterations_epochs"):
        del saved["model"][key]
    model = from_any(saved, complete=True).to_dict()["model"]
    assert (model["train_iterations"], model["train_iterations_epochs"]) == (0, 0)
