"""``python -m deepnmf_jax.sweep``: see :mod:`deepnmf_jax.sweep.cli`."""

import sys

from deepnmf_jax.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
