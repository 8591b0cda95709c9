"""A model written outside the library trains, resumes, evaluates and exports with its trainer.

``UserNet`` is a new block order: an NMF convolution, a 1x1 mixing layer that changes the width
(8 -> 12 channels), then an NMF layer over the whole map. Nothing in the library knows it: its NMF
weights get the NMF learning rate because of what they are, and it is named by an import string
(``tests.test_user_model:UserNet``) so that ``deepnmf evaluate`` and ``export`` rebuild it.
"""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

import deepnmf_jax as dnmf
from deepnmf_jax import errors
from deepnmf_jax.training import optim
from tests.runners import run_module
from tests.test_train import tiny_config


class UserNet(nn.Module):
    num_classes: int = 10
    nmf_options: dnmf.NMFOptions = dnmf.NMFOptions(iterations=2)

    @nn.compact
    def __call__(self, images, train: bool):
        x = dnmf.NMFConv(8, 5, options=self.nmf_options, name="patches")(images)  # 28 -> 24
        x = dnmf.avg_pool(dnmf.BatchNorm(name="norm")(x, train), 4)  # 6 x 6 x 8
        x = dnmf.Mix1x1(features=12, name="mix")(x)  # a non-square 1x1 layer: 8 -> 12
        x = dnmf.NMFConv(self.num_classes, "full", options=self.nmf_options, name="top")(nn.relu(x))
        return nn.softmax(x.reshape(x.shape[0], -1))


NAME = "tests.test_user_model:UserNet"
CONFIG = {"model.name": NAME, "num_epochs": 2, "tensorboard": False}


def test_user_model_trains_resumes_evaluates_and_exports(tmp_path):
    run = tmp_path / "run"
    first = dnmf.train_and_evaluate(tiny_config(**{**CONFIG, "num_epochs": 1}), run, UserNet())
    assert first["epochs_completed"] == 1
    results = dnmf.train_and_evaluate(tiny_config(**CONFIG), run, UserNet())  # resumes
    assert results["epochs_completed"] == 2 and results["model"] == NAME
    # counted from what each layer is: the two NMF kernels, the 1x1 layer, the norm
    assert results["parameters"] == {
        "nmf": 75 * 8 + 6 * 6 * 12 * 10,
        "conv": 8 * 12 + 12,
        "batchnorm": 16,
        "total": 75 * 8 + 4320 + 108 + 16,
        "cnn_nmf_ratio": 108 / (75 * 8 + 4320),
    }
    assert not [key for key in results if key.startswith("dead_")]  # no return_intermediates
    assert (run / "population" / f"{results['best_checkpoint'].replace('/', '-')}.npz").is_file()
    for args in (["evaluate", "--workdir", run], ["export", "--workdir", run]):
        code, output = run_module("deepnmf_jax", *args)
        assert code == 0, output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["model"] == NAME and "population statistics" in metrics["batch_norm"]
    assert (run / "eval" / "export" / "model.jax_export").stat().st_size > 1000


def test_parameter_groups_of_a_user_model_come_from_layer_types():
    roles = dnmf.models.anatomy(UserNet(), (28, 28, 3)).param_roles()
    labels = traverse_util.flatten_dict(optim.param_group_labels(roles))
    assert labels == {
        ("patches", "kernel"): "a",
        ("top", "kernel"): "a",
        ("mix", "kernel"): "b",
        ("mix", "bias"): "b",
        ("norm", "scale"): "bn",
        ("norm", "bias"): "bn",
    }
    counted = dnmf.models.flops.count(UserNet(), (28, 28, 3))
    assert [row.name for row in counted.layers] == ["patches", "mix", "top"]
    assert counted.layers[1].forward == 6 * 6 * 2 * 8 * 12  # the 1x1 layer, 8 -> 12 channels


def test_a_preset_name_with_a_model_object_is_refused():
    with pytest.raises(errors.ConfigError, match=r"model= was given, but config\.model\.name is"):
        dnmf.train_and_evaluate(tiny_config(), "unused", UserNet())


def test_a_model_named_by_an_import_string_is_built_by_the_config():
    model = dnmf.models.build(dnmf.ModelConfig(name=NAME, iterations=3), 10, 3)
    assert isinstance(model, UserNet) and model.nmf_options.iterations == 3
    with pytest.raises(errors.ConfigError, match="has no Nothing"):
        dnmf.models.build(dnmf.ModelConfig(name="tests.test_user_model:Nothing"), 10)
    images = np.zeros((2, 28, 28, 3), np.float32) + 0.5
    variables = model.init(jax.random.key(0), images, train=False)
    assert model.apply(variables, images, train=False).shape == (2, 10)
