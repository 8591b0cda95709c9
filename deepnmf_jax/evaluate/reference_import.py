"""A model trained elsewhere, as a run folder this library evaluates: one trained by the PyTorch
reference (``import-reference``), or a released model of :mod:`deepnmf_jax.pretrained`
(``import-pretrained``, e.g. to run the noise suite on it).

Save the reference's network (it pickles the whole module) as ``.npz`` with two lines of torch::

    net = torch.load("Model_seed_21.pt", weights_only=False)
    numpy.savez("model.npz", **{k: v.cpu().numpy() for k, v in net.state_dict().items()})

then ``python -m deepnmf_jax.evaluate import-reference --state_dict model.npz --model cnmf_1x1
--workdir RUN`` writes RUN/config.json (the training config file's defaults with this model, one
seed) and a checkpoint holding those weights as ``best/`` and ``checkpoints/``, so that every evaluate
command (metrics, noise, export) works on it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib

import jax
import numpy as np

from deepnmf_jax import checkpointing, compiled, reference
from deepnmf_jax import workdir as workdir_lib
from deepnmf_jax.dataset_files import DATASETS
from deepnmf_jax.errors import ConfigError


def training_config(dataset: str, config_file: str | None = None):
    """The training config of ``configs/<dataset>.py`` (or ``config_file``), read by path."""
    path = pathlib.Path(config_file or f"configs/{dataset}.py")
    if not path.is_file():
        raise ConfigError(
            f"training config {path} not found: run from the project's folder or pass its path"
        )
    module_spec = importlib.util.spec_from_file_location(f"_deepnmf_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    import sys

    sys.path.insert(0, str(path.resolve().parent.parent))
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module.get_config()


def import_state_dict(
    npz: pathlib.Path,
    model_name: str,
    folder: pathlib.Path,
    dataset: str = "cifar10",
    config_file=None,
) -> pathlib.Path:
    if not npz.is_file():
        raise ConfigError(f"--state_dict {npz} does not exist")
    if (folder / "config.json").exists():
        raise ConfigError(f"{folder} already holds a run; choose another --workdir")
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    config = training_config(dataset, config_file)
    config.model.name = model_name
    config.num_seeds = 1
    spec = DATASETS[dataset]
    try:
        with np.load(npz) as arrays:
            variables = reference.load_reference_params(
                model_name,
                dict(arrays),
                image_size=config.augment.crop_size,
                input_channels=spec.image_shape[-1],
            )
    except ValueError as error:
        raise ConfigError(f"{npz}: {error}") from None
    return _write_run(config, variables, folder)


def import_pretrained(name: str, folder: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """A released model (:mod:`deepnmf_jax.pretrained`) as a run folder: the manifest's config
    (the run that trained it, one seed) and its weights as that run's checkpoint. Returns
    ``(folder, manifest entry)``."""
    import ml_collections

    from deepnmf_jax import pretrained

    if (folder / "config.json").exists():
        raise ConfigError(f"{folder} already holds a run; choose another --workdir")
    try:
        entry = pretrained.info(name)
        _, variables = pretrained.load(name)
    except (KeyError, ValueError) as error:
        raise ConfigError(str(error).strip("'\"")) from None
    config = ml_collections.ConfigDict(workdir_lib.complete_config(entry["config"]))
    config.num_seeds, config.seed = 1, entry["seed"]
    step = int(entry["checkpoint"].rsplit("/", 1)[-1])
    return _write_run(config, variables, folder, step=step, epoch=entry["epoch"]), entry


def _write_run(config, variables: dict, folder: pathlib.Path, step: int = 0, epoch: int = 0):
    """``folder`` with ``config`` and one seed's ``variables`` saved as best/ and checkpoints/ at
    ``step`` (the trainer's own format, so every evaluate command reads it)."""
    spec = DATASETS[config.data.name]
    run_steps = compiled.make_steps(config, spec.num_classes, spec.image_shape, steps_per_epoch=1)
    placement = run_steps.placement
    state = run_steps.init(placement.seed_keys([config.seed]))
    on_seeds = lambda tree: placement.put_tree(
        jax.tree_util.tree_map(lambda v: np.asarray(v)[None], tree), placement.seeds
    )
    state = state.replace(params=on_seeds(variables["params"]))
    if variables.get("batch_stats"):
        state = state.replace(batch_stats=on_seeds(variables["batch_stats"]))
    if config.optim.ema_decay > 0:
        state = state.replace(ema_params=state.params)
    folder = workdir_lib.prepare(folder)
    workdir_lib.write_config(folder, json.loads(config.to_json_best_effort()))
    checkpoints = checkpointing.Checkpoints(folder)
    progress = dataclasses.replace(checkpointing.Progress.start(1), epoch=epoch)
    checkpointing.save_run(checkpoints, step, state, progress, [], placement.fetch, best=True)
    checkpoints.wait()
    checkpoints.close()
    return folder
