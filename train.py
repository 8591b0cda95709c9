"""Trains the paper's models: ``python train.py --config configs/cifar10.py --workdir DIR``.

Flags only; the work is done by :func:`deepnmf_jax.train_lib.train_and_evaluate`. Override any config
value with ``--config.KEY=VALUE`` (e.g. ``--config.model.name=cnn --config.num_seeds=1``); unknown keys
are an error. Rerunning with the same ``--workdir`` resumes.
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    library_log = logging.getLogger("deepnmf_jax")
    library_log.addHandler(handler)
    library_log.setLevel(logging.INFO)
    library_log.propagate = False
    from deepnmf_jax import input_pipeline, train_lib

    try:
        train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except train_lib.TrainingInterrupted as stopped:
        print(stopped, file=sys.stderr)
        return 130
    except (
        input_pipeline.DataNotFoundError,
        train_lib.NonFiniteLossError,
        train_lib.ConfigError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
