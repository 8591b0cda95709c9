"""Training configurations (ml_collections), all derived from ``configs/default.py``."""
