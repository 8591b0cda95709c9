"""A trained run opened for evaluation: its own config, one of its checkpoints (read-only, verified
against the checksum saved with it), its BatchNorm population statistics, and the class
probabilities of every seed.

Nothing here takes the run's lock or writes into ``checkpoints/``, so a run that is still training can
be evaluated: the newest complete checkpoint is read (a save in progress is an orbax temporary folder,
which is ignored; one deleted while being read is retried with the next newest). The run needs no
absolute path from the machine that trained it: the data location can be given again.

BatchNorm: the population statistics saved for the checkpoint (``population/``) by default, so a
prediction does not depend on the other images of its batch; ``batch_stats=True`` (or a run without
them, with a note) uses each evaluation batch's statistics, the reference's protocol.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from deepnmf_jax.data.files import DATASETS
from deepnmf_jax.data.pipeline import Split, load_for_config
from deepnmf_jax.errors import CheckpointError, ConfigError
from deepnmf_jax.training import checkpoint, population_stats, program, session
from deepnmf_jax.training.config import TrainConfig
from deepnmf_jax.training.state import TrainState
from deepnmf_jax.training.workdir import read_config


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """One run's model with the parameters of every seed, ready to predict."""

    folder: pathlib.Path
    config: TrainConfig
    checkpoint: str  # e.g. "best/12000"
    epoch: int
    program: program.Program
    state: TrainState  # params, batch_stats, ema_params on the devices (seed axis first)
    population: Any = None  # per-seed BatchNorm population statistics on the devices, or None
    note: str = ""  # how BatchNorm normalises, in words
    checksum: str | None = None  # the checkpoint's stored sha256 of its arrays

    @property
    def seeds(self) -> list[int]:
        return self.config.seeds

    @property
    def num_classes(self) -> int:
        return DATASETS[self.config.data.name].num_classes

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(seeds, N, classes) probabilities for uint8 or float (N, H, W, C) images, in batches
        of ``eval_batch_size`` (centre-cropped as in training's evaluation)."""
        placement = self.program.placement
        probs, _ = session.predict(
            self.program, self.state, placement.put(np.asarray(images)), self.population
        )
        return probs

    def variables(self, seed_index: int) -> dict:
        """One seed's ``variables`` as host arrays (the moving average where the run kept one;
        the population statistics where they are used)."""
        state = self.program.placement.fetch(self.state)
        pick = lambda tree: jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[seed_index], tree)
        params = state.ema_params if self.config.optim.ema_decay > 0 else state.params
        variables = {"params": pick(params)}
        if state.batch_stats:
            variables["batch_stats"] = pick(state.batch_stats)
        if self.population is not None:
            variables["population"] = pick(self.program.placement.fetch(self.population))
        return variables


def _steps_in(directory: pathlib.Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)


def _restore(step_dir: pathlib.Path, like_state, fetch) -> tuple[TrainState, dict]:
    """(state, meta) of one checkpoint, restored into the run's own state structure and checked
    against the checksum stored with it."""
    import json

    meta = json.loads((step_dir / "meta" / "metadata").read_text())
    abstract = checkpoint.abstract_like(like_state)
    with checkpoint._quiet_orbax():
        # orbax takes absolute paths only; --workdir may be relative (runs/cnmf_1x1)
        state = ocp.StandardCheckpointer().restore((step_dir / "state").absolute(), abstract)
    expected = meta.get("checksum")
    if expected is not None and checkpoint.tree_checksum(fetch(state)) != expected:
        raise checkpoint.ChecksumMismatch("its arrays do not match their stored checksum")
    return state, meta


def _candidates(folder: pathlib.Path, which: str) -> list[tuple[str, int]]:
    if which == "best":
        return [("best", s) for s in _steps_in(folder / "best")[:1]]
    if which == "latest":
        return [("checkpoints", s) for s in _steps_in(folder / "checkpoints")]
    if which.isdigit():
        kinds = ("checkpoints", "best")
        return [(k, int(which)) for k in kinds if int(which) in _steps_in(folder / k)][:1]
    raise ConfigError(f"--checkpoint must be best, latest or a step number, got {which!r}")


def load_checkpoint(folder: pathlib.Path, which: str, like_state, fetch):
    """(name, state, meta) of ``best``, ``latest`` or a step number. ``latest`` falls back to the
    older checkpoint if the newest is unreadable (it may be deleted under us by a running training);
    an explicit choice does not. A checkpoint whose arrays do not fit the run's model (copied from
    another run) is named as such."""
    candidates = _candidates(folder, which)
    if not candidates:
        raise CheckpointError(
            f"{folder} has no {which} checkpoint (looked in checkpoints/ and best/)"
        )
    errors = []
    for kind, step in candidates:
        try:
            state, meta = _restore(folder / kind / str(step), like_state, fetch)
        except (ValueError, KeyError, TypeError) as error:
            if isinstance(error, checkpoint.ChecksumMismatch):
                errors.append(f"{kind}/{step}: damaged ({error})")
                continue
            raise CheckpointError(
                f"{folder}/{kind}/{step} is not a checkpoint of this run's model "
                f"({checkpoint._first_line(error)})"
            ) from None
        except Exception as error:  # orbax raises many types for damaged or vanished files
            errors.append(f"{kind}/{step}: {type(error).__name__}: {checkpoint._first_line(error)}")
            continue
        return f"{kind}/{step}", state, meta
    raise CheckpointError(f"no {which} checkpoint of {folder} could be read ({'; '.join(errors)})")


def population_command(folder: pathlib.Path, checkpoint_name: str) -> str:
    which = "best" if checkpoint_name.startswith("best/") else checkpoint_name.rsplit("/", 1)[-1]
    return f"deepnmf population-stats --workdir {folder} --checkpoint {which}"


def open_run(
    folder,
    checkpoint_name: str = "best",
    eval_batch_size: int | None = None,
    data_overrides: dict | None = None,
    *,
    model: nn.Module | None = None,
    batch_stats: bool = False,
    require_population: bool = False,
) -> TrainedRun:
    """Opens a run for evaluation (module docstring).

    Args:
      checkpoint_name: ``"best"``, ``"latest"`` or a step number.
      eval_batch_size: replaces the run's evaluation batch.
      data_overrides: replace keys of ``config.data`` (``data_dir``, ``source``: where the data is
        on this machine); another ``source`` than the run's drops its validation split.
      model: the module the run trained, where its config names none that can be built.
      batch_stats: each batch's BatchNorm statistics instead of the population's.
      require_population: a run without population statistics for the checkpoint is an error
        that names the command making them.
    """
    folder = pathlib.Path(folder)
    config = read_config(folder)
    if not _candidates(folder, checkpoint_name):  # before anything is compiled
        raise CheckpointError(
            f"{folder} has no {checkpoint_name} checkpoint (looked in checkpoints/ and best/)"
        )
    overrides = {
        "mesh.seed_devices": 0,  # whatever devices are here
        "mesh.data_devices": 0,
        "distributed.coordinator_address": "",
        "distributed.auto_detect": False,
    }
    if eval_batch_size:
        overrides["eval_batch_size"] = eval_batch_size
    data_overrides = dict(data_overrides or {})
    if data_overrides.get("source", config.data.source) != config.data.source:
        # other data than the run's: its validation split (a slice of its own training images)
        # means nothing there, and may not fit (5,000 of the bundled sample's 1,000)
        overrides["data.validation_size"] = 0
    overrides.update({f"data.{k}": v for k, v in data_overrides.items()})
    config = config.replace(overrides)
    spec = DATASETS[config.data.name]
    built = program.build(config, spec.num_classes, spec.image_shape, 1, model=model)
    placement = built.placement
    like = built.init(placement.seed_keys(config.seeds))
    name, state, meta = load_checkpoint(folder, checkpoint_name, like, placement.fetch)
    epoch = int(meta.get("progress", {}).get("epoch", 0))
    population, note = None, ""
    has_batch_norm = bool(jax.eval_shape(lambda s: built.moments(s, _probe(spec)), state))
    if has_batch_norm and not batch_stats:
        stats = population_stats.matching(folder, name, meta.get("checksum"))
        if stats is not None:
            population = placement.put_tree(stats, placement.seeds)
            note = "BatchNorm: population statistics (every image alike, whatever its batch)"
        elif require_population:
            raise CheckpointError(
                f"{folder} has no BatchNorm population statistics for {name}; make them with "
                f"{population_command(folder, name)}"
            )
        else:
            note = (
                f"BatchNorm: statistics of each evaluation batch of {config.eval_batch_size} "
                f"images (no population statistics for {name}: "
                f"{population_command(folder, name)} makes them)"
            )
    elif has_batch_norm:
        note = (
            f"BatchNorm: statistics of each evaluation batch of {config.eval_batch_size} images "
            "(the reference's protocol; predictions depend on the batch)"
        )
    return TrainedRun(
        folder, config, name, epoch, built, state, population, note, meta.get("checksum")
    )


def _probe(spec) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((2, *spec.image_shape), np.uint8)


def evaluation_split(run: TrainedRun, split: str = "test") -> Split:
    """The run's test split, or its validation split (``data.validation_size`` of the run)."""
    data = load_for_config(run.config.data, run.config.progress)
    if split == "test":
        return data.test
    if split in ("val", "validation"):
        if data.validation is None:
            raise ConfigError(
                f"{run.folder} has no validation split here (trained without one, or --source "
                "gave other data than the run's)"
            )
        return data.validation
    raise ConfigError(f"--split must be test or validation, got {split!r}")


def run_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    """The runs in ``folder``: itself, or a sweep's variants (those that have been trained)."""
    import json

    if (folder / "config.json").is_file():
        return [folder]
    plan = folder / "sweep.json"
    if plan.is_file():
        try:
            names = [v["name"] for v in json.loads(plan.read_text())["variants"]]
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{plan} is damaged ({error})") from None
        found = [folder / n for n in names if (folder / n / "config.json").is_file()]
        if found:
            return found
        raise ConfigError(f"no variant of the sweep in {folder} has been trained yet")
    if not folder.exists():
        raise ConfigError(f"--workdir {folder} does not exist")
    raise ConfigError(f"{folder} is neither a training run (config.json) nor a sweep (sweep.json)")
