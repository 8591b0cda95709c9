"""Tuning a fast training recipe on the validation split.

Every candidate trains one seed for 4 epochs on 10,000 CIFAR-10 training images and is judged on
5,000 held-out training images (``data.validation_size``); the test set is not looked at (only 100
test images are evaluated, to keep the runs cheap). The same candidates, with the same budget, run
for CNMF+1x1 and for CNN+1x1 (``:cnn_1x1``), so the paper's comparison is re-tested on equal terms:

    deepnmf sweep run --config sweeps/recipe_tuning --workdir runs/tune_cnmf \\
        --config.data.data_dir=PATH
    deepnmf sweep run --config sweeps/recipe_tuning:cnn_1x1 --workdir runs/tune_cnn \\
        --config.data.data_dir=PATH

Candidates: the paper's recipe; a cosine schedule with one warm-up epoch; with augmentation drawn
per image; with two, three and five times the paper's learning rates; with label smoothing; with an
EMA of the parameters; with weight decay (AdamW's, 0.05); with batches of 100 and the rates scaled
by sqrt(2); with a linear head (at half, two and three times the rates too); with BatchNorm at 1x1,
with either head, and with it at half and twice the rates, with label smoothing, with an EMA, with
weight decay and with batches of 100 (CNN+1x1's own recipe, tuned like CNMF+1x1's); with
running-average BatchNorm; the one-cycle schedule; and (CNMF+1x1 only) training steps with 10 or 5
NMF iterations instead of 20. README, "How the recipe was chosen", has the validation accuracy of
each.
"""

import ml_collections

from deepnmf_jax.configs import cifar10
from deepnmf_jax.experiments import grid

COSINE = {"optim.schedule": "cosine", "optim.warmup_epochs": 1.0}
PER_IMAGE = {**COSINE, "augment.granularity": "sample"}
BN_1X1 = {**PER_IMAGE, "model.batch_norm_1x1": True}


# AdamW's decoupled decay of the conv kernels (NMF weights are normalised per column: spared), and
# twice the paper's batch with the rates scaled by sqrt(100 / 50) (Adam's rule of thumb)
WEIGHT_DECAY = {"optim.weight_decay": 0.05}
BATCH_100 = {"batch_size": 100, "optim.lr_batch_scaling": "sqrt"}


def _rates(factor: float) -> dict:
    return {
        "optim.lr_a": 0.01 * factor,
        "optim.lr_b": 0.001 * factor,
        "optim.lr_bn": 0.001 * factor,
    }


CANDIDATES = [
    {"recipe": "paper"},
    {"recipe": "cosine", **COSINE},
    {"recipe": "cosine_sample", **PER_IMAGE},
    {"recipe": "cosine_sample_lr2", **PER_IMAGE, **_rates(2)},
    {"recipe": "cosine_sample_lr3", **PER_IMAGE, **_rates(3)},
    {"recipe": "cosine_sample_lr5", **PER_IMAGE, **_rates(5)},
    {"recipe": "cosine_sample_ls", **PER_IMAGE, "label_smoothing": 0.1},
    {"recipe": "cosine_sample_ema", **PER_IMAGE, "optim.ema_decay": 0.998},
    {"recipe": "cosine_sample_wd", **PER_IMAGE, **WEIGHT_DECAY},
    {"recipe": "cosine_sample_batch100", **PER_IMAGE, **BATCH_100},
    # a plain 1x1 convolution as the last layer: no class channel can die (the CNN models' fault)
    {"recipe": "cosine_sample_linear_head", **PER_IMAGE, "model.head": "linear"},
    # the linear head changes what the CNN models learn most from, so its rates are tuned again
    *(
        {
            "recipe": f"cosine_sample_linear_head_lr{f:g}",
            **PER_IMAGE,
            "model.head": "linear",
            **_rates(f),
        }
        for f in (0.5, 2, 3)
    ),
    # BatchNorm at 1x1 too: no channel of blocks 3-4 can die behind its ReLU (CNN+1x1's block 3)
    {"recipe": "cosine_sample_bn1x1", **BN_1X1},
    # CNN+1x1 keeps BatchNorm at 1x1 (its fast recipe), so its rates and regularisers are tuned
    # with it, as CNMF+1x1's are without
    *({"recipe": f"cosine_sample_bn1x1_lr{f:g}", **BN_1X1, **_rates(f)} for f in (0.5, 2)),
    {"recipe": "cosine_sample_bn1x1_ls", **BN_1X1, "label_smoothing": 0.1},
    {"recipe": "cosine_sample_bn1x1_ema", **BN_1X1, "optim.ema_decay": 0.998},
    {"recipe": "cosine_sample_bn1x1_wd", **BN_1X1, **WEIGHT_DECAY},
    {"recipe": "cosine_sample_bn1x1_batch100", **BN_1X1, **BATCH_100},
    {
        "recipe": "cosine_sample_linear_head_bn1x1",
        **PER_IMAGE,
        "model.head": "linear",
        "model.batch_norm_1x1": True,
    },
    # running-average BatchNorm: predictions that do not depend on the batch (a released model
    # classifies single images); a recipe choice like the others, judged on validation
    {"recipe": "cosine_sample_running_bn", **PER_IMAGE, "model.batch_norm": "running"},
    {
        "recipe": "onecycle_sample",
        **PER_IMAGE,
        "optim.schedule": "onecycle",
        "optim.warmup_epochs": 3.0,
        "optim.final_lr_fraction": 0.001,
    },
]

# Models with NMF layers only: training steps with fewer NMF iterations (evaluation keeps 20)
NMF_CANDIDATES = [
    {"recipe": f"cosine_sample_train_iter{n}", **PER_IMAGE, "model.train_iterations": n}
    for n in (10, 5)
]


def get_config(model: str = "cnmf_1x1") -> ml_collections.ConfigDict:
    base = cifar10.get_config()
    base.model.name = model
    base.num_seeds = 1
    base.num_epochs = 4
    base.data.train_limit = 15_000  # the first 15,000 training images ...
    base.data.validation_size = 5_000  # ... of which 5,000 are held out for validation
    base.data.test_limit = 100
    base.tensorboard = False
    sweep = ml_collections.ConfigDict()
    sweep.name = f"recipe_tuning_{model}"
    sweep.base = base
    # each candidate is named by its recipe (grid.LABEL), not by its many keys
    candidates = CANDIDATES + (NMF_CANDIDATES if model.startswith("cnmf") else [])
    sweep.points = [{grid.LABEL: c["recipe"], **_without(c, "recipe")} for c in candidates]
    sweep.figures = ("curves",)
    return sweep


def _without(point: dict, key: str) -> dict:
    return {k: v for k, v in point.items() if k != key}
