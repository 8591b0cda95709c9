"""Prints the scaled errors (max|ours - ref| / max|ref|) against the reference fixtures, per case and
array, in float64 and float32: the numbers quoted in the README.

    python scripts/parity_report.py
"""

import pathlib

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from deepnmf_jax.reference import parity  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def scaled(new, ref):
    return float(np.max(np.abs(np.asarray(new, np.float64) - ref)) / np.max(np.abs(ref)))


def layer_report():
    arrays = np.load(FIXTURES / "nnmf_layer.npz")
    worst = {}
    for case in arrays["meta/cases"]:
        for dtype in (np.float64, np.float32):
            out = parity.layer_fixture_outputs(arrays, str(case), dtype)
            errors = {name: scaled(value, arrays[f"{case}/{name}"]) for name, value in out.items()}
            print(
                f"layer {case:<28} {np.dtype(dtype).name:<8} "
                + "  ".join(f"{k} {v:.1e}" for k, v in errors.items())
            )
            worst[np.dtype(dtype).name] = max(worst.get(np.dtype(dtype).name, 0), *errors.values())
    return worst


def model_report():
    worst = {}
    for name in ("cnn", "cnmf", "cnn_1x1", "cnmf_1x1"):
        arrays = dict(np.load(FIXTURES / f"model_{name}.npz"))
        zero = {f"grad/{n}" for n in arrays["meta/zero_grad_params"]}
        for dtype in (np.float64, np.float32):
            out = parity.model_fixture_outputs(name, arrays, dtype)
            errors = {
                "probs": scaled(out["output/probs"], arrays["output/probs"]),
                "loss": scaled(out["output/loss"], arrays["output/loss"]),
                "acts": max(scaled(out[k], arrays[k]) for k in out if k.startswith("act/")),
                "grads": max(
                    scaled(out[k], arrays[k])
                    for k in out
                    if k.startswith("grad/") and k not in zero
                ),
            }
            zero_max = max([float(np.max(np.abs(out[k]))) for k in zero], default=0.0)
            print(
                f"model {name:<9} {np.dtype(dtype).name:<8} "
                + "  ".join(f"{k} {v:.1e}" for k, v in errors.items())
                + f"  zero-grad biases max |g| {zero_max:.1e}"
            )
            worst[np.dtype(dtype).name] = max(worst.get(np.dtype(dtype).name, 0), *errors.values())
    return worst


if __name__ == "__main__":
    print("worst layer:", layer_report())
    print("worst model:", model_report())
