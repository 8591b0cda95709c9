"""The hand count of matrix-product flops (deepnmf_jax.flops) against counts worked out by hand."""

from deepnmf_jax import models
from deepnmf_jax.models import flops


def test_first_nmf_layer_by_hand():
    # CNMF block 1 on a 28 x 28 x 3 crop: 24 x 24 = 576 positions, S = 3 * 5 * 5 = 75, I = 32.
    # Per iteration two products of 2 * 75 * 32 = 4,800 flops a position; 20 iterations.
    rows = flops.layer_flops(models.build_model("cnmf"), (28, 28, 3))
    first = rows[0]
    assert (first.name, first.positions, first.inputs, first.outputs) == ("block1.a", 576, 75, 32)
    assert first.forward == 576 * 20 * 2 * 4_800 == 110_592_000
    assert first.backward == 576 * 4 * 4_800  # R, dL/dx and the two products of dL/dW


def test_cnn_1x1_layers_by_hand():
    rows = {r.name: r for r in flops.layer_flops(models.build_model("cnn_1x1"), (28, 28, 3))}
    # block 2 after a 2x2 pool: 12 x 12 x 32 in, 8 x 8 positions of 32 * 25 = 800 inputs, 64 out
    assert (rows["block2.a"].positions, rows["block2.a"].inputs) == (64, 800)
    assert rows["block2.a"].forward == 64 * 2 * 800 * 64
    assert rows["block2.a"].backward == 2 * rows["block2.a"].forward
    assert rows["block1.a"].backward == rows["block1.a"].forward  # no dL/dx of the image
    assert rows["block3.a"].inputs == 64 * 4 * 4 and rows["block3.a"].positions == 1
    assert rows["block1.b"].forward == 576 * 2 * 32 * 32


def test_groups_divide_the_products_and_iterations_scale_the_forward():
    plain = flops.layer_flops(models.build_model("cnmf", iterations=10), (28, 28, 3))
    grouped = flops.layer_flops(models.build_model("cnmf", groups=4, iterations=10), (28, 28, 3))
    assert grouped[0].forward == plain[0].forward  # block 1 is never grouped
    assert grouped[1].forward * 4 == plain[1].forward
    twenty = flops.layer_flops(models.build_model("cnmf"), (28, 28, 3))
    assert twenty[1].forward == 2 * plain[1].forward and twenty[1].backward == plain[1].backward
    total = flops.train_step_flops(models.build_model("cnmf_1x1"), (28, 28, 3))
    assert 420e6 < total < 430e6  # about 430 MFLOP an image (spec/performance-notes.md)
