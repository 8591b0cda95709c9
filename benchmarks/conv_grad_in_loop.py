"""A convolution's weight gradient on XLA:CPU, alone and for several seeds: vmapped, in a
``lax.map`` (a while loop) and in an unrolled Python loop. A repro for XLA, not for this library.

    python benchmarks/conv_grad_in_loop.py                   # CNN+1x1's first layer, batch 50, 5 seeds
    python benchmarks/conv_grad_in_loop.py --out runs/benchmarks/conv_grad_in_loop.json

Why it exists: with ``model.patch_conv=conv`` five CNN+1x1 seeds run one after another in a
``lax.map`` trained at 135 images/s instead of 1,500 (``docs/results/benchmarks.md``). This script
isolates the cause: the gradient with respect to the kernel of one 5x5 convolution of 28x28x3 images
(the first layer's shape), for ``--seeds`` kernels. Every form computes the same numbers (checked
here); only the time differs. Prints one line per form (median milliseconds over ``--repeats``
calls, after a compiling call) and its ratio to the seeds' gradients done one at a time.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from deepnmf_jax import machine


def conv_loss(kernel: jax.Array, images: jax.Array) -> jax.Array:
    """Sum of squares of a VALID NHWC/HWIO convolution; (kh, kw, C, F) kernel, (N, H, W, C) images."""
    out = lax.conv_general_dilated(
        images, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.sum(out * out)


FORMS = {  # "one seed at a time" times one call of one kernel; the seeds take that x their count
    "one seed at a time": lambda grad, kernels, images: grad(kernels[0], images)[None],
    "vmap": lambda grad, kernels, images: jax.vmap(grad, (0, None))(kernels, images),
    "lax.map": lambda grad, kernels, images: lax.map(lambda k: grad(k, images), kernels),
    "python loop": lambda grad, kernels, images: jnp.stack([grad(k, images) for k in kernels]),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--size", type=int, default=28, help="image height and width")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON output (none: print only)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    images = jnp.asarray(
        rng.random((args.batch, args.size, args.size, args.channels), dtype=np.float32)
    )
    kernels = jnp.asarray(
        rng.normal(
            size=(args.seeds, args.kernel, args.kernel, args.channels, args.features)
        ).astype(np.float32)
    )
    grad = jax.grad(conv_loss)
    expected = np.stack([np.asarray(jax.jit(grad)(k, images)) for k in kernels])
    rows = []
    for name, form in FORMS.items():
        fn = jax.jit(lambda k, x, form=form: form(grad, k, x))
        got = np.asarray(fn(kernels, images))
        np.testing.assert_allclose(
            got, expected[: got.shape[0]], rtol=2e-4, atol=1e-4 * float(np.abs(expected).max())
        )
        _, seconds = machine.median_seconds(lambda fn=fn: fn(kernels, images), args.repeats, 1)
        rows.append({"form": name, "ms": 1e3 * seconds * args.seeds / got.shape[0]})
    one_at_a_time = rows[0]["ms"]
    for row in rows:
        row["vs_one_at_a_time"] = row["ms"] / one_at_a_time
        print(
            f"{row['form']:>20}: {row['ms']:9.2f} ms  {row['vs_one_at_a_time']:6.1f}x", flush=True
        )
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {"args": vars(args), "machine": machine.machine_info(), "rows": rows}
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
