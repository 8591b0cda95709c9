"""``python -m deepnmf_jax.evaluate``: see :mod:`deepnmf_jax.evaluate.cli`."""

import sys

from deepnmf_jax.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(main())
