"""The paper's experiments as sweeps: grids of training configs, run locally or on SLURM (submitit).

* :mod:`~deepnmf_jax.sweep.grid`: declaring grids (``axis``, ``product``, ``concat``) and naming
  their variants;
* :mod:`~deepnmf_jax.sweep.spec`: loading a sweep file and planning its variants;
* :mod:`~deepnmf_jax.sweep.launch`: the submitit jobs (local or SLURM), resumable;
* :mod:`~deepnmf_jax.sweep.status`, :mod:`~deepnmf_jax.sweep.report`,
  :mod:`~deepnmf_jax.sweep.figures`: what each variant is doing, the tables, the paper's figures;
* :mod:`~deepnmf_jax.sweep.cli`: ``python -m deepnmf_jax.sweep run|status|report``.
"""
