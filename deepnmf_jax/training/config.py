"""The typed training config: frozen, validated dataclasses, built once at the entry point.

Config files stay Python (``ml_collections``, ``configs/*.py``); :func:`from_any` turns their
``ConfigDict`` (or a dict, e.g. a run's ``config.json``) into a :class:`TrainConfig`, checking every
key and value with one-line :class:`~deepnmf_jax.errors.ConfigError`\\ s. Nothing below the entry
point reads a ``ConfigDict``. Each field's behaviour (does it compile, may it change on resume, is
it incidental, since when) is metadata of the field (:mod:`deepnmf_jax._schema`); the key sets below
are derived from it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from deepnmf_jax import _schema
from deepnmf_jax._schema import field
from deepnmf_jax.data.augment import AugmentConfig
from deepnmf_jax.data.config import DataConfig
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.models.config import ModelConfig
from deepnmf_jax.models.losses import LOSSES

SCHEDULES = ("plateau", "cosine", "onecycle")
LR_BATCH_SCALINGS = ("none", "linear", "sqrt")
SEED_LOOPS = ("auto", "vmap", "map", "unroll")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Adam per parameter group and the learning-rate schedule (the reference's by default)."""

    lr_a: float = field(0.01, resume="may_change")  # NMF and patch layers (the paper says 0.001)
    lr_b: float = field(0.001, resume="may_change")  # 1x1 layers and any other layer
    lr_bn: float = field(0.001, resume="may_change")  # normalisation scales and biases
    b1: float = field(0.9)
    b2: float = field(0.999)
    eps: float = field(1e-8)
    plateau_factor: float = field(0.1)  # torch ReduceLROnPlateau's defaults, once per epoch
    plateau_patience: int = field(10)  # in torch's sense: reduce on the 11th bad epoch
    plateau_rtol: float = field(1e-4)
    plateau_cooldown: int = field(0)
    stop_lr: float = field(1e-9)  # stop when every learning rate is below this
    # "plateau" (the reference) | "cosine" (warm-up, then cosine decay over num_epochs) |
    # "onecycle" (optax's cosine one-cycle); the rates above are then the peak rates
    schedule: str = field("plateau")
    warmup_epochs: float = field(0.0)  # cosine / onecycle: epochs to reach the peak
    initial_lr_fraction: float = field(0.04)  # cosine / onecycle: start at this fraction of peak
    final_lr_fraction: float = field(0.0)  # cosine: end value; onecycle: must be > 0
    weight_decay: float = field(0.0)  # AdamW's decoupled decay of the kernels (not NMF U)
    ema_decay: float = field(0.0)  # evaluate an exponential moving average of the parameters
    lr_batch_scaling: str = field("none")  # scale lr_* with batch_size: none | linear | sqrt
    reference_batch_size: int = field(50)

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"config.optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}"
            )
        if self.lr_batch_scaling not in LR_BATCH_SCALINGS:
            raise ConfigError(
                f"config.optim.lr_batch_scaling must be one of {LR_BATCH_SCALINGS}, got "
                f"{self.lr_batch_scaling!r}"
            )
        for name in (
            "lr_a",
            "lr_b",
            "lr_bn",
            "eps",
            "plateau_rtol",
            "stop_lr",
            "warmup_epochs",
            "weight_decay",
            "plateau_patience",
            "plateau_cooldown",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"config.optim.{name} must be >= 0, got {getattr(self, name)}")
        if self.reference_batch_size < 1:
            raise ConfigError(
                f"config.optim.reference_batch_size must be >= 1, got {self.reference_batch_size}"
            )
        for name in ("b1", "b2", "plateau_factor", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(
                    f"config.optim.{name} must be in [0, 1), got {getattr(self, name)}"
                )
        if self.schedule != "plateau":
            if not 0 < self.initial_lr_fraction <= 1:
                raise ConfigError(
                    "config.optim.initial_lr_fraction must be in (0, 1], got "
                    f"{self.initial_lr_fraction}"
                )
            low = 0 if self.schedule == "cosine" else 1e-30
            if not low <= self.final_lr_fraction <= 1:
                allowed = "[0, 1]" if low == 0 else "(0, 1] for onecycle"
                raise ConfigError(
                    f"config.optim.final_lr_fraction must be in {allowed}, got "
                    f"{self.final_lr_fraction}"
                )


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The (seed, data) device mesh; 0: automatic. A run may resume on other devices."""

    seed_devices: int = field(0, resume="may_change")  # devices the seed axis is split over
    data_devices: int = field(0, resume="may_change")  # devices each batch is split over

    def __post_init__(self):
        if self.seed_devices < 0 or self.data_devices < 0:
            raise ConfigError(
                f"config.mesh sizes must be >= 0 (0: automatic), got {self.seed_devices}, "
                f"{self.data_devices}"
            )


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """``jax.distributed`` for several hosts; empty: one process (or the environment's
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``)."""

    coordinator_address: str = field("", compiled=False, resume="may_change")  # host:port
    num_processes: int = field(0, compiled=False, resume="may_change")
    process_id: int = field(-1, compiled=False, resume="may_change")
    auto_detect: bool = field(False, compiled=False, resume="may_change")  # SLURM, Open MPI


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run (sections: ``model``, ``data``, ``augment``, ``optim``, ``mesh``,
    ``distributed``). Hashable and immutable: derive a variant with :meth:`replace`."""

    seed: int = field(21, compiled=False)  # seed k of num_seeds is seed + k (the reference's 21)
    num_seeds: int = field(5)  # replicas trained together (a leading seed axis)
    # upper bound; the plateau schedule stops earlier when every lr < optim.stop_lr. It sets the
    # length of the cosine / onecycle schedules (then it may not change on resume)
    num_epochs: int = field(500, resume="may_change")
    batch_size: int = field(50)
    eval_batch_size: int = field(50)  # evaluation batches (BatchNorm statistics without population)
    loss: str = field("reference")  # "reference": (KL + 0.5 MSE)/1.5 summed | "paper": eq. 21
    label_smoothing: float = field(0.0)  # targets (1 - a) onehot + a / classes in either loss
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    # how the seeds run inside one step: "vmap" (batched), "map" (one after another), "unroll" (a
    # copy of the step per seed), or "auto" (map on a CPU whose seed axis is not split over devices,
    # vmap elsewhere)
    seed_loop: str = field("auto", resume="may_change")
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    checkpoint_every_epochs: int = field(1, compiled=False, resume="incidental")
    log_every_steps: int = field(10, compiled=False, resume="incidental")  # loss fetches
    progress: bool = field(True, compiled=False, resume="incidental")  # progress bars
    tensorboard: bool = field(True, compiled=False, resume="incidental")  # event files

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"config.loss must be one of {tuple(LOSSES)}, got {self.loss!r}")
        if self.seed_loop not in SEED_LOOPS:
            raise ConfigError(
                f"config.seed_loop must be one of {SEED_LOOPS}, got {self.seed_loop!r}"
            )
        for name in (
            "num_seeds",
            "num_epochs",
            "batch_size",
            "eval_batch_size",
            "checkpoint_every_epochs",
            "log_every_steps",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"config.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"config.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.optim.schedule != "plateau" and self.optim.warmup_epochs >= self.num_epochs:
            raise ConfigError(
                f"config.optim.warmup_epochs = {self.optim.warmup_epochs} must be less than "
                f"num_epochs = {self.num_epochs} (the schedule spans num_epochs)"
            )

    def replace(self, overrides: Mapping[str, Any] | None = None, **top: Any) -> TrainConfig:
        """A copy with dotted ``overrides`` (``{"model.width": 2}``) and top-level keywords."""
        return _schema.replace(self, {**(overrides or {}), **top})

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts: what a run's ``config.json`` holds."""
        return _schema.to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.num_seeds)]


def from_any(config: Any, complete: bool = False) -> TrainConfig:
    """A :class:`TrainConfig` from a TrainConfig, an ``ml_collections.ConfigDict`` or nested dicts.

    Args:
      complete: the dicts are a saved run's ``config.json``: keys added since it was written read
        as their defaults (which keep that run's computation).
    """
    if isinstance(config, TrainConfig):
        return config
    if hasattr(config, "to_dict"):  # an ml_collections ConfigDict
        config = config.to_dict()
    return _schema.from_dict(TrainConfig, config, "config", complete=complete)


def from_json_text(text: str, source: str = "config.json") -> TrainConfig:
    """A saved run's config (:func:`from_any` with ``complete``)."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{source} is not valid JSON ({error})") from None
    try:
        return from_any(data, complete=True)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def _keys(predicate) -> frozenset[str]:
    return _schema.keys_where(TrainConfig, predicate)


INCIDENTAL_KEYS = _keys(lambda m: m["resume"] == "incidental")
"""Keys that change neither what is computed nor its results (paths, reporting)."""
RESUMABLE_KEYS = _keys(lambda m: m["resume"] != "fixed")
"""Keys whose value a run may change when it resumes (the incidental ones included)."""
NOT_COMPILED_KEYS = _keys(lambda m: not m["compiled"])
"""Keys that leave the compiled programs as they are (one compiled program serves every value)."""
ADDED_KEYS = {
    key: f.default
    for key, (f, _) in _schema.flat_fields(TrainConfig).items()
    if f.metadata.get("since") is not None
}
"""Keys added after runs were written, with the default a saved config without them reads as."""
