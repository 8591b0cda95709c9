"""The four paper models against the reference fixtures, parameter counts, and the reference I/O."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepnmf_jax import models, reference
from deepnmf_jax.models import dead_channels, param_counts
from deepnmf_jax.reference import parity
from tests.conftest import FIXTURES
from tests.helpers import assert_close_to_reference, scaled_error

MODEL_NAMES = ["cnn", "cnmf", "cnn_1x1", "cnmf_1x1"]
PAPER_COUNTS = {"cnn": 153_258, "cnmf": 153_056, "cnn_1x1": 168_088, "cnmf_1x1": 167_886}


@functools.cache
def _fixture(name):
    return dict(np.load(FIXTURES / f"model_{name}.npz"))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_matches_reference_fixtures(name, dtype):
    fixture = _fixture(name)
    out = parity.model_fixture_outputs(name, fixture, dtype)
    assert out["output/probs"].dtype == dtype and out["output/loss"].dtype == dtype
    assert_close_to_reference(out["output/probs"], fixture["output/probs"], dtype, f"{name} probs")
    loss_rtol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(out["output/loss"], fixture["output/loss"], rtol=loss_rtol)
    for block in range(1, 5):
        key = f"act/block{block}.out"
        assert_close_to_reference(out[key], fixture[key], dtype, f"{name} {key}")

    names = [str(n) for n in fixture["meta/param_names"]]
    assert sorted(k for k in out if k.startswith("grad/")) == sorted(f"grad/{n}" for n in names)
    zero_grad = {str(n) for n in fixture["meta/zero_grad_params"]}
    largest = max(float(np.max(np.abs(fixture[f"grad/{n}"]))) for n in names)
    zero_bound = (1e-10 if dtype == np.float64 else 1e-5) * largest
    for param in names:
        key = f"grad/{param}"
        if param in zero_grad:
            assert float(np.max(np.abs(out[key]))) <= zero_bound, param
        else:
            assert_close_to_reference(out[key], fixture[key], dtype, param)


def test_unrolled_gradient_differs_from_the_reference():
    """The fixtures were made with the one-step backward; autodiff through the loop is different."""
    fixture = _fixture("cnmf")
    out = parity.model_fixture_outputs("cnmf", fixture, np.float64, backward="unrolled")
    assert scaled_error(out["output/probs"], fixture["output/probs"]) < 1e-12  # same forward
    for param in ("block1.a.weight", "block4.a.weight"):
        key = f"grad/{param}"
        assert scaled_error(out[key], fixture[key]) > 0.5, param


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_counts_match_the_paper(name):
    variables = reference.load_reference_params(name, _fixture(name))
    assert (
        param_counts.count_params(variables)
        == PAPER_COUNTS[name]
        == int(_fixture(name)["meta/param_count"])
    )


def _expected_count(name, width, groups, classes=10, channels=3):
    f1, f2, f3 = (round(width * f) for f in (32, 64, 96))
    conv = name.startswith("cnn")
    count = channels * 25 * f1 + 25 * f1 * f2 // groups + 16 * f2 * f3 // groups + f3 * classes
    if conv:
        count += f1 + f2 + f3 + classes
    if name.endswith("_1x1"):
        count += f1 * f1 + f1 + f2 * f2 // groups + f2 + f3 * f3 // groups + f3
        count += classes * classes + classes + 2 * (f1 + f2)
    return count + 2 * (f1 + f2)


@pytest.mark.parametrize(
    "name,width,groups,classes",
    [("cnmf_1x1", 2, 4, 10), ("cnn_1x1", 0.5, 2, 100), ("cnmf", 1, 8, 10), ("cnn", 1, 1, 100)],
)
def test_parameter_counts_with_width_and_groups(name, width, groups, classes):
    model = models.build_model(name, width=width, groups=groups, num_classes=classes)
    images = jax.ShapeDtypeStruct((2, 28, 28, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    assert param_counts.count_params(shapes) == _expected_count(name, width, groups, classes)


def test_fashion_mnist_shapes():
    model = models.build_model("cnmf_1x1", input_channels=1)
    images = jax.ShapeDtypeStruct((2, 24, 24, 1), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    assert shapes["params"]["block1"]["a"]["kernel"].shape == (25, 32)
    assert shapes["params"]["block3"]["a"]["kernel"].shape == (9 * 64, 96)
    with pytest.raises(ValueError, match="expects 1 input channels"):
        jax.eval_shape(
            lambda x: model.init(jax.random.key(0), x, train=False),
            jax.ShapeDtypeStruct((2, 24, 24, 3), jnp.float32),
        )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_reference_params_round_trip_bit_exactly(name):
    fixture = _fixture(name)
    for dtype in (np.float64, np.float32):
        variables = reference.load_reference_params(name, fixture, dtype=dtype)
        exported = reference.export_reference_params(name, variables)
        for param in fixture["meta/param_names"]:
            original = fixture[f"param/{param}"]
            assert exported[str(param)].shape == original.shape
            np.testing.assert_array_equal(exported[str(param)].astype(np.float64), original)


def test_reference_params_errors_name_the_problem():
    fixture = {k[len("param/") :]: v for k, v in _fixture("cnn").items() if k.startswith("param/")}
    with pytest.raises(ValueError, match=r"missing \['block1.b.bias'"):
        reference.load_reference_params("cnn_1x1", fixture)
    bad = dict(fixture, **{"block1.a.weight": np.zeros((32, 74, 1, 1))})
    with pytest.raises(ValueError, match=r"block1\.a\.weight"):
        reference.load_reference_params("cnn", bad)
    with pytest.raises(ValueError, match="unknown model"):
        reference.load_reference_params("resnet", fixture)


def test_grouped_reference_layout_round_trips():
    model = models.build_model("cnmf_1x1", groups=4)
    variables = jax.jit(lambda key: model.init(key, jnp.zeros((2, 28, 28, 3)), train=False))(
        jax.random.key(1)
    )
    exported = reference.export_reference_params("cnmf_1x1", variables, groups=4)
    assert exported["block2.a.weight"].shape == (4, 16, 200)  # (G, F/G, S/G) as davrot/nnmf_24b
    assert exported["block2.b.weight"].shape == (64, 16, 1, 1)  # torch grouped conv
    loaded = reference.load_reference_params("cnmf_1x1", exported, groups=4)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)


def test_intermediates_and_float64_throughout(getkey):
    model = models.build_model("cnmf_1x1", iterations=2)
    images = jax.random.uniform(getkey(), (2, 28, 28, 3), jnp.float64)
    variables = jax.jit(lambda key: model.init(key, images.astype(jnp.float32), train=False))(
        getkey()
    )
    variables64 = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), variables)
    probs, inter = jax.jit(lambda v, x: model.apply(v, x, train=False, return_intermediates=True))(
        variables64, images
    )
    assert probs.shape == (2, 10) and probs.dtype == jnp.float64
    np.testing.assert_allclose(np.sum(probs, -1), 1.0, rtol=1e-14)
    assert inter["block1"]["a"].shape == (2, 24, 24, 32)  # the final codes h of NMF layer 1
    np.testing.assert_allclose(np.sum(inter["block1"]["a"], -1), 1.0, rtol=1e-12)
    assert inter["block2"]["out"].shape == (2, 4, 4, 64)
    assert all(v.dtype == jnp.float64 for v in jax.tree_util.tree_leaves(inter))


def test_build_model_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("cnmf1x1")
    with pytest.raises(ValueError, match="backward must be one of"):
        models.build_model("cnmf", backward="full")
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        models.build_model("cnmf", batch_norm="eval")
    with pytest.raises(TypeError):
        models.build_model("cnmf", widht=2)
    model = models.build_model("cnmf", groups=3)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        jax.eval_shape(
            lambda x: model.init(jax.random.key(0), x, train=False),
            jax.ShapeDtypeStruct((2, 28, 28, 3), jnp.float32),
        )
    custom = models.DeepNMF(
        blocks=(models.BlockSpec(4, 3),),
        block_cls=functools.partial(models.Block, a_layer="nmf", mix=False),
    )
    with pytest.raises(ValueError, match="reduce the image to 1x1"):
        jax.eval_shape(
            lambda x: custom.init(jax.random.key(0), x, train=False),
            jax.ShapeDtypeStruct((2, 5, 5, 3), jnp.float32),
        )


def test_parameter_breakdown_and_separate_groups():
    """Fig. 6's split: NMF U, convolutions (CNN a-layers and 1x1 layers), BatchNorm; counts by hand."""
    counts = param_counts.param_breakdown(models.build_model("cnmf_1x1"), (28, 28, 3))
    assert counts["nmf"] == 75 * 32 + 800 * 64 + 1024 * 96 + 96 * 10 == 152_864
    assert counts["conv"] == 32 * 33 + 64 * 65 + 96 * 97 + 10 * 11 == 14_638
    assert counts["batchnorm"] == 384 and counts["total"] == PAPER_COUNTS["cnmf_1x1"]
    np.testing.assert_allclose(counts["cnn_nmf_ratio"], 14_638 / 152_864)
    # groups_nmf = 16 shrinks blocks 2-3's NMF layers 16-fold; groups_mix = 1 keeps the 1x1 layers.
    model = models.build_model("cnmf_1x1", groups_nmf=16, groups_mix=1)
    counts = param_counts.param_breakdown(model, (28, 28, 3))
    assert counts["nmf"] == 75 * 32 + 800 * 64 // 16 + 1024 * 96 // 16 + 96 * 10 == 12_704
    assert counts["conv"] == 14_638
    np.testing.assert_allclose(counts["cnn_nmf_ratio"], 14_638 / 12_704)
    model = models.build_model("cnmf_1x1", groups=4, groups_mix=2)  # groups_nmf falls back to 4
    shapes = param_counts.abstract_params(model, (28, 28, 3))
    assert shapes["block2"]["a"]["kernel"].shape == (4, 200, 16)
    assert shapes["block2"]["b"]["kernel"].shape == (2, 32, 32)
    cnn = models.build_model("cnn_1x1")
    counts = param_counts.param_breakdown(cnn, (28, 28, 3))
    assert counts["nmf"] == 0 and counts["cnn_nmf_ratio"] is None
    assert counts["conv"] == 153_066 + 14_638 and counts["total"] == PAPER_COUNTS["cnn_1x1"]


def _both_heads(key, name, images, **options):
    """(variables in float64, reference-head probabilities and intermediates, linear-head
    probabilities) of one set of parameters, which both heads share."""
    reference_head = models.build_model(name, width=0.25, **options)
    linear_head = models.build_model(name, width=0.25, head="linear", **options)
    init = jax.jit(functools.partial(reference_head.init, train=False))  # not op by op
    variables = init(key, images.astype(jnp.float32))
    variables = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), variables)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
        jax.eval_shape(functools.partial(linear_head.init, train=False), key, images)
    )
    p_ref, inter = jax.jit(
        lambda v, x: reference_head.apply(v, x, train=False, return_intermediates=True)
    )(variables, images)
    p_lin = jax.jit(lambda v, x: linear_head.apply(v, x, train=False))(variables, images)
    return variables, p_ref, inter, p_lin


def _assert_plain_layer(probs, inputs, layer_params):
    """``probs`` are the softmax of a plain linear layer of ``inputs`` (N, C), some negative."""
    assert np.any(inputs < 0)
    logits = inputs @ layer_params["kernel"] + layer_params["bias"][None]
    np.testing.assert_allclose(probs, jax.nn.softmax(logits, axis=-1), rtol=1e-12)


def test_linear_head(getkey):
    """head="linear": the last 1x1 layer without ReLU and L1. For CNMF+1x1 (non-negative codes
    summing to 1) the same function as the reference head; for CNN+1x1 a negative class channel
    then reaches the output."""
    images = jax.random.uniform(getkey(), (4, 28, 28, 3), jnp.float64)
    for name in ("cnmf_1x1", "cnn_1x1"):
        variables, p_ref, inter, p_lin = _both_heads(getkey(), name, images, iterations=3)
        if name == "cnmf_1x1":
            np.testing.assert_allclose(p_lin, p_ref, rtol=1e-12)
        else:
            classes = inter["block4"]["a"][:, 0, 0]  # the CNN's class channels, both signs
            _assert_plain_layer(p_lin, classes, variables["params"]["block4"]["b"])
    with pytest.raises(ValueError, match="head must be one of"):
        models.build_model("cnn_1x1", head="plain")


def test_linear_head_of_the_plain_cnn(getkey):
    """head="linear" in the CNN: the last block (1x1, class channels) is a plain convolution of
    block 3's outputs of both signs, without the ReLU and the L1 normalisation; the same
    parameters. The plain CNMF has none (its last layer is an NMF layer)."""
    images = jax.random.uniform(getkey(), (4, 28, 28, 3), jnp.float64)
    variables, _, inter, p_lin = _both_heads(getkey(), "cnn", images)
    hidden = inter["block3"]["out"][:, 0, 0]  # (4, 24): block 3 reduces the image to 1x1
    _assert_plain_layer(p_lin, hidden, variables["params"]["block4"]["a"])
    with pytest.raises(ValueError, match="not defined for 'cnmf'"):
        models.build_model("cnmf", head="linear")


def test_which_channels_pass_a_relu_at_1x1(getkey):
    expected = {
        ("cnn", "reference"): ("hidden",),
        ("cnmf", "reference"): ("hidden",),
        # block 3's outputs pass block 4's input ReLU, the class channels the last one
        ("cnn_1x1", "reference"): ("class", "hidden"),
        ("cnmf_1x1", "reference"): ("class", "hidden"),
        ("cnn", "linear"): (),
        # the linear head's last a-layer still rectifies block 3's outputs
        ("cnn_1x1", "linear"): ("hidden",),
        ("cnmf_1x1", "linear"): ("hidden",),
    }
    for (name, head), kinds in expected.items():
        model = models.build_model(name, width=0.25, head=head)
        assert dead_channels.kinds(model, (28, 28, 3)) == kinds, (name, head)
        normed = models.build_model(name, width=0.25, head=head, batch_norm_1x1=True)
        assert dead_channels.kinds(normed, (28, 28, 3)) == (), (name, head)
    # the taps are block 3's output and the last block's a-layer output, before their ReLUs
    model = models.build_model("cnn_1x1", width=0.25)
    images = jax.random.uniform(getkey(), (3, 28, 28, 3))
    variables = model.init(getkey(), images, train=False)
    _, inter = model.apply(variables, images, train=False, return_intermediates=True)
    taps = dead_channels.collect(inter)
    np.testing.assert_array_equal(taps["hidden"], inter["block3"]["out"])
    np.testing.assert_array_equal(taps["class"], inter["block4"]["a"])
    maxima = dead_channels.channel_maxima(inter)
    np.testing.assert_array_equal(maxima["class"], inter["block4"]["a"].reshape(3, -1).max(0))


def test_dead_channels_counted_by_hand():
    # two seeds; a channel is dead where its largest value over the images is <= 0
    maxima = {"hidden": np.array([[0.5, 0.0, -1.0], [1e-9, 2.0, 3.0]]), "class": np.zeros((2, 2))}
    assert dead_channels.counts(maxima) == {
        "dead_hidden_channels": [2, 0],
        "dead_class_channels": [2, 2],
    }
    assert dead_channels.counts({}) == {}


@functools.cache
def _state_dicts():
    return dict(np.load(FIXTURES / "reference_state_dicts.npz"))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_real_reference_state_dict_loads_and_gives_the_reference_probabilities(name):
    """``reference_state_dicts.npz`` holds ``state_dict()`` of networks built by the reference's own
    ``make_network`` (keys by module position, e.g. ``15.weight``), with the fixture's weights, and
    the reference's float32 probabilities on the fixture images (tests/fixtures/README.md)."""
    arrays = _state_dicts()
    prefix = f"{name}/state_dict/"
    state_dict = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    assert set(state_dict) == set(reference.positional_names(name))
    variables = reference.load_reference_params(name, state_dict)
    images = jnp.asarray(_fixture(name)["input/images"], jnp.float32)
    probs = models.build_model(name).apply(variables, images, train=True)
    np.testing.assert_allclose(probs, arrays[f"{name}/probs_float32"], rtol=0, atol=2e-6)
    other = "cnn" if name != "cnn" else "cnmf"
    with pytest.raises(
        ValueError, match=rf"(not parameters of a reference|do not match model) '{other}'"
    ):
        reference.load_reference_params(other, state_dict)


def test_batch_norm_1x1_goes_in_front_of_every_relu_at_1x1_and_centres_its_channels(getkey):
    """Blocks 3 and 4 are at 1x1, where the reference has no BatchNorm; the option adds one after
    each layer whose output a ReLU takes next, and none on the class scores."""
    expected = {  # (name, head) -> the BatchNorms of blocks 3 and 4
        ("cnn_1x1", "reference"): {"block3": {"a_bn", "b_bn"}, "block4": {"a_bn"}},
        ("cnmf_1x1", "reference"): {"block3": {"a_bn", "b_bn"}, "block4": {"a_bn"}},
        ("cnn_1x1", "linear"): {"block3": {"a_bn", "b_bn"}, "block4": set()},
        ("cnn", "reference"): {"block3": {"a_bn"}, "block4": set()},
        ("cnmf", "reference"): {"block3": {"a_bn"}, "block4": set()},
        ("cnn", "linear"): {"block3": set(), "block4": set()},  # block 4 takes block 3 raw
    }
    images = jax.random.uniform(jax.random.key(0), (8, 28, 28, 3), jnp.float64)
    for (name, head), norms in expected.items():
        for option in (False, True):
            model = models.build_model(name, width=0.25, head=head, batch_norm_1x1=option)
            shapes = jax.eval_shape(functools.partial(model.init, train=False), getkey(), images)
            for block, names in norms.items():
                found = {k for k in shapes["params"][block] if k.endswith("_bn")}
                assert found == (names if option else set()), (name, head, option, block)
    model = models.build_model("cnn_1x1", width=0.25, batch_norm_1x1=True)
    variables = jax.jit(functools.partial(model.init, train=False))(getkey(), images)
    _, inter = jax.jit(lambda v, x: model.apply(v, x, train=False, return_intermediates=True))(
        variables, images
    )
    hidden = np.asarray(inter["block3"]["out"][:, 0, 0])  # (8, 24): BatchNorm of the batch
    np.testing.assert_allclose(hidden.mean(0), 0, atol=1e-6)
    variance = hidden.var(0)  # v / (v + eps) for the variance v in front of it, scale 1
    assert np.all((variance > 0.9) & (variance <= 1)), variance
    assert np.all(hidden.max(0) > 0)  # no channel <= 0 on the whole batch
