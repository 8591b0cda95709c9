"""A model trained elsewhere, as a run folder this library evaluates: one trained by the PyTorch
reference (``import-reference``), or a released model of :mod:`deepnmf_jax.pretrained`
(``import-pretrained``, e.g. to run the noise suite on it).

Save the reference's network (it pickles the whole module) as ``.npz`` with two lines of torch::

    net = torch.load("Model_seed_21.pt", weights_only=False)
    numpy.savez("model.npz", **{k: v.cpu().numpy() for k, v in net.state_dict().items()})

then ``deepnmf import-reference --state-dict model.npz --model cnmf_1x1 --workdir RUN`` writes
RUN/config.json (the dataset's training config with this model, one seed) and a checkpoint holding
those weights as ``best/`` and ``checkpoints/``, so that every evaluation command works on it.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np

from deepnmf_jax import config_files
from deepnmf_jax.data import archives
from deepnmf_jax.data.files import DATASETS
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.models.presets import PAPER_MODELS
from deepnmf_jax.nn.linen import POPULATION
from deepnmf_jax.reference.weights import load_reference_params
from deepnmf_jax.training import checkpoint, population_stats, program
from deepnmf_jax.training import workdir as workdir_lib
from deepnmf_jax.training.config import TrainConfig, from_any
from deepnmf_jax.training.state import Progress


def import_state_dict(
    npz: pathlib.Path, model_name: str, folder: pathlib.Path, dataset: str = "cifar10"
) -> pathlib.Path:
    """A run folder holding a reference ``state_dict`` (``.npz``) as its one seed."""
    if not npz.is_file():
        raise ConfigError(f"--state-dict {npz} does not exist")
    if (folder / "config.json").exists():
        raise ConfigError(f"{folder} already holds a run; choose another --workdir")
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    if model_name not in PAPER_MODELS:
        raise ConfigError(f"--model must be one of {sorted(PAPER_MODELS)}, got {model_name!r}")
    config = from_any(config_files.load(dataset)).replace(
        {"model.name": model_name, "num_seeds": 1}
    )
    spec = DATASETS[dataset]
    try:
        variables = load_reference_params(
            model_name,
            archives.read_npz(npz, str(npz)),
            image_size=config.augment.crop_size,
            input_channels=spec.image_shape[-1],
        )
    except ValueError as error:
        raise ConfigError(f"{npz}: {error}") from None
    return _write_run(config, variables, folder)


def import_pretrained(name: str, folder: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """A released model (:mod:`deepnmf_jax.pretrained`) as a run folder: the manifest's config
    (the run that trained it, one seed), its weights as that run's checkpoint and its BatchNorm
    population statistics. Returns ``(folder, manifest entry)``."""
    from deepnmf_jax import pretrained

    if (folder / "config.json").exists():
        raise ConfigError(f"{folder} already holds a run; choose another --workdir")
    try:
        entry = pretrained.info(name)
        _, variables = pretrained.load(name)
    except (KeyError, ValueError) as error:
        raise ConfigError(str(error).strip("'\"")) from None
    config = from_any(entry["config"], complete=True).replace(
        {"num_seeds": 1, "seed": entry["seed"]}
    )
    step = int(entry["checkpoint"].rsplit("/", 1)[-1])
    return _write_run(config, variables, folder, step=step, epoch=entry["epoch"]), entry


def _write_run(
    config: TrainConfig, variables: dict, folder: pathlib.Path, step: int = 0, epoch: int = 0
):
    """``folder`` with ``config`` and one seed's ``variables`` saved as best/ and checkpoints/ at
    ``step`` (the trainer's own format, so every evaluation command reads it), and their
    population statistics where ``variables`` has them."""
    spec = DATASETS[config.data.name]
    built = program.build(config, spec.num_classes, spec.image_shape, 1)
    placement = built.placement
    state = built.init(placement.seed_keys([config.seed]))

    def on_seeds(tree):
        return placement.put_tree(
            jax.tree_util.tree_map(lambda v: np.asarray(v)[None], tree), placement.seeds
        )

    state = state.replace(params=on_seeds(variables["params"]))
    if variables.get("batch_stats"):
        state = state.replace(batch_stats=on_seeds(variables["batch_stats"]))
    if config.optim.ema_decay > 0:
        state = state.replace(ema_params=state.params)
    folder = workdir_lib.prepare(folder)
    workdir_lib.write_config(folder, config)
    checkpoints = checkpoint.Checkpoints(folder)
    progress = dataclasses.replace(Progress.start(1), epoch=epoch)
    checkpoint.save_run(checkpoints, step, state, progress, [], placement.fetch, best=True)
    checkpoints.wait()
    checkpoints.close()
    if variables.get(POPULATION):
        stats = jax.tree_util.tree_map(lambda v: np.asarray(v)[None], variables[POPULATION])
        population_stats.save(
            population_stats.path_for(folder, f"best/{step}"),
            stats,
            {
                "checkpoint": f"best/{step}",
                "state_checksum": checkpoint.tree_checksum(placement.fetch(state)),
                "source": "imported with the weights",
            },
        )
    return folder
