"""Trains a model: ``python train.py --config configs/cifar10.py --workdir DIR``.

The same as ``deepnmf train`` (the package's command line, :mod:`deepnmf_jax.cli`): override any
config value with ``--config.KEY=VALUE``; rerunning with the same ``--workdir`` resumes.
"""

import sys

from deepnmf_jax.cli import main

if __name__ == "__main__":
    # the command line's own process: on tcmalloc where it is installed (deepnmf_jax._malloc)
    sys.exit(main(["train", *sys.argv[1:]], entry_point=True))
