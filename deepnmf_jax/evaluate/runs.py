"""A trained run opened for evaluation: its own config, one of its checkpoints (read-only, verified
against the checksum saved with it), and the class probabilities of every seed.

Nothing here takes the run's lock or writes into ``checkpoints/``, so a run that is still training can
be evaluated: the newest complete checkpoint is read (a save in progress is an orbax temporary folder,
which is ignored; one deleted while being read is retried with the next newest). The run needs no
absolute path from the machine that trained it: the data location can be given again.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from deepnmf_jax import checkpointing, compiled, input_pipeline, steps
from deepnmf_jax import workdir as workdir_lib
from deepnmf_jax.dataset_files import DATASETS
from deepnmf_jax.errors import CheckpointError, ConfigError


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """One run's model with the parameters of every seed, ready to predict."""

    folder: pathlib.Path
    config: ml_collections.ConfigDict
    checkpoint: str  # e.g. "best/12000"
    epoch: int
    run_steps: compiled.Steps
    state: steps.TrainState  # params, batch_stats, ema_params on the devices (seed axis first)

    @property
    def seeds(self) -> list[int]:
        return [self.config.seed + k for k in range(self.config.num_seeds)]

    @property
    def num_classes(self) -> int:
        return DATASETS[self.config.data.name].num_classes

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(seeds, N, classes) probabilities for uint8 or float (N, H, W, C) images, in batches
        of ``eval_batch_size`` (centre-cropped as in training's evaluation)."""
        placement = self.run_steps.placement
        probs, _ = placement.fetch(self.run_steps.predict(self.state, placement.put(images)))
        return np.asarray(probs)


def _steps_in(directory: pathlib.Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)


def read_config(folder: pathlib.Path) -> ml_collections.ConfigDict:
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder} is not a training run (no config.json)")
    try:
        return ml_collections.ConfigDict(workdir_lib.complete_config(json.loads(path.read_text())))
    except ValueError as error:
        raise ConfigError(f"{path} is unreadable: {error}") from None


def _restore(step_dir: pathlib.Path, like_state, fetch) -> tuple[steps.TrainState, dict]:
    """(state, meta) of one checkpoint, restored into the run's own state structure (the trainer's
    way) and checked against the checksum stored with it."""
    meta = json.loads((step_dir / "meta" / "metadata").read_text())
    abstract = checkpointing.abstract_like(like_state)
    with checkpointing._quiet_orbax():
        # orbax takes absolute paths only; --workdir may be relative (runs/cnmf_1x1)
        state = ocp.StandardCheckpointer().restore((step_dir / "state").absolute(), abstract)
    expected = meta.get("checksum")
    if expected is not None and checkpointing.tree_checksum(fetch(state)) != expected:
        raise checkpointing.ChecksumMismatch("its arrays do not match their stored checksum")
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
            if isinstance(error, checkpointing.ChecksumMismatch):
                errors.append(f"{kind}/{step}: damaged ({error})")
                continue
            raise CheckpointError(
                f"{folder}/{kind}/{step} is not a checkpoint of this run's model "
                f"({checkpointing._first_line(error)})"
            ) from None
        except Exception as error:  # orbax raises many types for damaged or vanished files
            errors.append(
                f"{kind}/{step}: {type(error).__name__}: {checkpointing._first_line(error)}"
            )
            continue
        return f"{kind}/{step}", state, meta
    raise CheckpointError(f"no {which} checkpoint of {folder} could be read ({'; '.join(errors)})")


def open_run(
    folder,
    checkpoint: str = "best",
    eval_batch_size: int | None = None,
    data_overrides: dict | None = None,
) -> TrainedRun:
    """Opens a run for evaluation (module docstring). ``data_overrides`` replace keys of
    ``config.data`` (``data_dir``, ``source``: where the data is on this machine); another
    ``source`` than the run's drops its validation split."""
    folder = pathlib.Path(folder)
    config = read_config(folder)
    if not _candidates(folder, checkpoint):  # before anything is compiled
        raise CheckpointError(
            f"{folder} has no {checkpoint} checkpoint (looked in checkpoints/ and best/)"
        )
    with config.unlocked():
        config.mesh.seed_devices = config.mesh.data_devices = 0  # whatever devices are here
        config.distributed.coordinator_address = ""
        config.distributed.auto_detect = False
        if eval_batch_size:
            config.eval_batch_size = eval_batch_size
        overrides = dict(data_overrides or {})
        if overrides.get("source", config.data.source) != config.data.source:
            # other data than the run's: its validation split (a slice of its own training
            # images) means nothing there, and may not fit (5,000 of the bundled sample's 1,000)
            config.data.validation_size = 0
        for key, value in overrides.items():
            config.data[key] = value
    spec = DATASETS[config.data.name]
    run_steps = compiled.make_steps(config, spec.num_classes, spec.image_shape, steps_per_epoch=1)
    placement = run_steps.placement
    seeds = [config.seed + k for k in range(config.num_seeds)]
    like = run_steps.init(placement.seed_keys(seeds))
    name, state, meta = load_checkpoint(folder, checkpoint, like, placement.fetch)
    epoch = int(meta.get("progress", {}).get("epoch", 0))
    return TrainedRun(folder, config, name, epoch, run_steps, state)


def evaluation_split(run: TrainedRun, split: str = "test") -> input_pipeline.Split:
    """The run's test split, or its validation split (``data.validation_size`` of the run)."""
    data = input_pipeline.load_for_config(run.config)
    if split == "test":
        return data.test
    if split in ("val", "validation"):
        if data.validation is None:
            raise ConfigError(
                f"{run.folder} has no validation split here (trained without one, or --source "
                "gave other data than the run's)"
            )
        return data.validation
    raise ConfigError(f"--split must be test or val, got {split!r}")
