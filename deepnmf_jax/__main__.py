"""``python -m deepnmf_jax``: the ``deepnmf`` command line."""

import sys

from deepnmf_jax.cli import main

sys.exit(main())
