"""The ``jnp.dot`` peak, timed on request: the worker of ``side_by_side.py`` that takes its turn in
every round beside the train steps, so each round's steps are compared with the peak of that round.

Its step is one ``jnp.dot`` of two ``--size`` x ``--size`` float32 matrices at ``Precision.HIGHEST``
(what :func:`deepnmf_jax.machine.matmul_peak_gflops` times). Protocol: ``step_protocol.py``; the
ready record is ``{"ready": ..., "flop_per_step": 2 size**3}``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import step_protocol  # beside this script


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args(argv)
    a = jax.random.uniform(jax.random.key(0), (args.size, args.size), jnp.float32)
    b = jax.random.uniform(jax.random.key(1), (args.size, args.size), jnp.float32)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))
    jax.block_until_ready(dot(a, b))

    def step() -> None:
        jax.block_until_ready(dot(a, b))

    ready = {"ready": f"jax {jax.__version__} jnp.dot peak", "flop_per_step": 2 * args.size**3}
    step_protocol.serve(step, ready)


if __name__ == "__main__":
    main()
