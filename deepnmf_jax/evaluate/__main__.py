"""Deprecated: ``python -m deepnmf_jax.evaluate [noise|export|...]`` runs ``deepnmf ...``."""

import sys

from deepnmf_jax.cli.legacy import evaluate_main

sys.exit(evaluate_main())
