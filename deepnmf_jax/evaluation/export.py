"""A trained seed's inference function as a file: ``jax.export`` (StableHLO), and ONNX where it works.

The function maps uint8 NHWC images of any batch size (the batch dimension is symbolic) to class
probabilities, with the preprocessing inside: /255 and the centre crop. ``model.jax_export`` holds it
serialized; ``model.json`` says the input shape and dtype, the classes, the seed's accuracy, the
config's sha256 and how BatchNorm behaves. Running it needs JAX alone, not this library::

    exported = jax.export.deserialize(bytearray(open("model.jax_export", "rb").read()))
    probabilities = exported.call(images_uint8)          # (B, 32, 32, 3) -> (B, 10)

BatchNorm uses the population statistics of the run's checkpoint where it has them, so a prediction
does not depend on the other images of the call's batch. A run without them (or ``--batch-stats``)
exports the reference's evaluation: each call's batch statistics, so call it with batches like the
evaluation's (50 images) for the accuracy in ``model.json``; ``model.json`` says which.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from deepnmf_jax.data.augment import preprocess_for_eval
from deepnmf_jax.data.files import DATASETS
from deepnmf_jax.evaluation.runs import TrainedRun
from deepnmf_jax.models import config as model_config

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)  # fmt: skip
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
    "ankle boot",
)  # fmt: skip


def class_names(dataset: str) -> list[str]:
    if dataset == "cifar10":
        return list(CIFAR10_CLASSES)
    if dataset == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    return [str(k) for k in range(DATASETS[dataset].num_classes)]


def inference_function(run: TrainedRun, variables: dict, carry_inputs: bool = False):
    """uint8 (B, H, W, C) -> probabilities (B, classes), the parameters closed over as constants.
    A model built from the config runs its NMF loops in one piece (chunks need a concrete batch
    size) and, with ``carry_inputs``, in jax2onnx's form (:class:`deepnmf_jax.NMFOptions`); a
    user's model runs as it is."""
    config = run.config
    spec = DATASETS[config.data.name]
    model = run.program.ctx.model
    if config.model.is_preset:
        model = model_config.build(
            config.model,
            spec.num_classes,
            spec.image_shape[-1],
            chunk_bytes=0,
            check_inputs=False,
            carry_inputs=carry_inputs,
        )
    crop = config.augment.crop_size

    def infer(images):
        return model.apply(variables, preprocess_for_eval(images, crop), train=False)

    return infer


def export_seed(run: TrainedRun, seed_index: int, out: pathlib.Path, accuracy=None) -> dict:
    """Writes ``model.jax_export`` and ``model.json`` for seed ``seed_index`` into ``out``."""
    spec = DATASETS[run.config.data.name]
    variables = run.variables(seed_index)
    infer = inference_function(run, variables)
    (batch,) = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, *spec.image_shape), jnp.uint8)
    exported = jax.export.export(jax.jit(infer), platforms=("cpu", "cuda"))(images)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.jax_export").write_bytes(exported.serialize())
    config_text = (run.folder / "config.json").read_bytes()
    manifest = {
        "input": {"shape": ["batch", *spec.image_shape], "dtype": "uint8", "layout": "NHWC"},
        "output": {"shape": ["batch", spec.num_classes], "meaning": "class probabilities"},
        "classes": class_names(run.config.data.name),
        "model": run.config.model.name,
        "seed": run.seeds[seed_index],
        "checkpoint": run.checkpoint,
        "epoch": run.epoch,
        "accuracy": accuracy,
        "config_sha256": hashlib.sha256(config_text).hexdigest(),
        "batch_norm": run.note or "no BatchNorm",
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
    }
    (out / "model.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def load(folder) -> tuple:
    """(callable, manifest) of an exported model: needs JAX alone (module docstring)."""
    folder = pathlib.Path(folder)
    exported = jax.export.deserialize(bytearray((folder / "model.jax_export").read_bytes()))
    return exported.call, json.loads((folder / "model.json").read_text())


@dataclasses.dataclass(frozen=True)
class OnnxResult:
    ok: bool
    detail: str  # what failed, or the path written
    max_difference: float | None = None  # onnxruntime against model.apply, on the check images


def export_onnx(run: TrainedRun, seed_index: int, out: pathlib.Path, check_images) -> OnnxResult:
    """Tries ``jax2onnx`` and checks the file with ``onnxruntime``; says exactly what failed."""
    try:
        import jax2onnx  # pyright: ignore[reportMissingImports]
        import onnxruntime
    except ImportError as error:
        return OnnxResult(False, f"not installed: {error.name} (pip install -e '.[onnx]')")
    spec = DATASETS[run.config.data.name]
    infer = inference_function(run, run.variables(seed_index), carry_inputs=True)
    path = out / "model.onnx"
    (batch,) = jax.export.symbolic_shape("B")
    images = jax.ShapeDtypeStruct((batch, *spec.image_shape), jnp.uint8)
    # jax2onnx imports every plugin and logs a traceback for each whose optional package (dm-pix,
    # equinox, ...) is missing, none of which these models use; onnx_ir warns about value types.
    quiet = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        jax2onnx.to_onnx(infer, [images], return_mode="file", output_path=str(path))
    except Exception as error:  # the converter's own message names the unsupported primitive
        return OnnxResult(False, f"jax2onnx could not convert the model: {_reason(error)}")
    finally:
        for logger, old in zip(quiet, levels, strict=True):
            logger.setLevel(old)
    try:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        ours = np.asarray(infer(jnp.asarray(check_images)))
        theirs = session.run(None, {name: np.asarray(check_images)})[0]
    except Exception as error:
        return OnnxResult(False, f"onnxruntime could not run {path.name}: {_reason(error)}")
    return OnnxResult(True, str(path), float(np.max(np.abs(ours - theirs))))


def _reason(error: BaseException) -> str:
    """The exception's type and first line (not JAX's note about filtered frames)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {(lines[0] if lines else '')[:400]}"
