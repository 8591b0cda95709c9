"""Trains the paper's deep NMF / CNN models: ``python train.py --config configs/cifar10.py --workdir DIR``.

Flags only; the work is done by :func:`deepnmf_jax.train_lib.train_and_evaluate`.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    print("training is not yet implemented (issue 4)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    app.run(main)
