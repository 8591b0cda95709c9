"""Deprecated: ``python -m deepnmf_jax.sweep run|status|report`` runs ``deepnmf sweep ...``."""

import sys

from deepnmf_jax.cli.legacy import sweep_main

sys.exit(sweep_main())
