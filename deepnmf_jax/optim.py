"""The optimiser: Adam per parameter group, and the reference's reduce-on-plateau schedule.

The reference (``mahbodnr/deep_nmf:tools/make_optimize.py``) runs one ``torch.optim.Adam`` per parameter
group (a-layers lr 0.01; b-layers and BatchNorm lr 0.001; betas (0.9, 0.999), eps 1e-8) and one
``ReduceLROnPlateau(factor=0.1, patience=10, threshold=1e-4 relative, eps=1e-10)`` per optimiser, all
stepped once per epoch with the same value: the sum of the epoch's per-batch training losses.

Here that is ``optax.partition`` of three Adams, followed by the scale of one
``optax.contrib.reduce_on_plateau`` whose state is advanced once per epoch (:func:`plateau_update`), as
torch's scheduler is, so a reduction takes effect from the next epoch's first step. Two differences of
optax had to be bridged:

* torch reduces on the (patience + 1)-th consecutive epoch without improvement (``num_bad > patience``),
  optax on the patience-th (``count == patience``): optax is given ``patience + 1``.
* torch skips a reduction smaller than its ``eps=1e-10``; one shared scale cannot. The first seven
  reductions are identical; at the eighth, torch leaves the 1e-3 groups at 1e-10 while the scale takes
  them to 1e-11. The run stops right then (every lr < 1e-9), so no step ever uses that value.
"""

from __future__ import annotations

import jax
import optax
from flax import traverse_util

PARAM_GROUPS = ("a", "b", "bn")


def param_group(path: tuple[str, ...]) -> str:
    """The group of a parameter from its path, e.g. ('block1', 'a_bn', 'scale') -> 'bn'."""
    layer = path[1] if len(path) > 1 else path[0]
    if layer.endswith("_bn"):
        return "bn"
    if layer in ("a", "b"):
        return layer
    raise ValueError(f"parameter {'/'.join(path)} belongs to no group of {PARAM_GROUPS}")


def param_group_labels(params):
    """A tree like ``params`` whose leaves are the group names."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: param_group(path) for path in flat})


def group_learning_rates(optim_config) -> dict[str, float]:
    return {"a": optim_config.lr_a, "b": optim_config.lr_b, "bn": optim_config.lr_bn}


def _standard_promotion(tx):
    """Runs optax under JAX's standard dtype promotion (it mixes int32 counts with float powers),
    so the optimiser also works where a user (or our test suite) enables strict promotion."""

    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(optim_config) -> optax.GradientTransformation:
    """Adam per parameter group, at the groups' base learning rates (before the plateau scale)."""

    def adam(learning_rate):
        return optax.adam(learning_rate, optim_config.b1, optim_config.b2, optim_config.eps)

    transforms = {name: adam(lr) for name, lr in group_learning_rates(optim_config).items()}
    return _standard_promotion(optax.partition(transforms, param_group_labels))


def make_plateau(optim_config) -> optax.GradientTransformationExtraArgs:
    """torch's ReduceLROnPlateau (mode min, relative threshold) as optax's, stepped once per epoch."""
    plateau = optax.contrib.reduce_on_plateau(
        factor=optim_config.plateau_factor,
        patience=optim_config.plateau_patience + 1,  # torch: reduce when num_bad > patience
        rtol=optim_config.plateau_rtol,
        atol=0.0,
        cooldown=optim_config.plateau_cooldown,
        accumulation_size=1,
    )
    return _standard_promotion(plateau)


def plateau_update(plateau, plateau_state, epoch_loss):
    """Advances the schedule by one epoch with the epoch's summed training loss."""
    _, plateau_state = plateau.update(None, plateau_state, value=epoch_loss)
    return plateau_state


class Schedule:
    """The learning-rate schedule of a run in one place: base rates per group, the plateau scale
    (one per seed, in ``TrainState.plateau_state.scale``) and the stop rule.

    A seed is finished when every one of its learning rates (base rate x scale) is below
    ``stop_lr``, the reference's stop; the train step freezes a finished seed, the loop stops when
    every seed is finished, and the report counts each seed's trained epochs by the same rule.
    """

    def __init__(self, optim_config):
        self.base_rates = group_learning_rates(optim_config)
        self.stop_lr = float(optim_config.stop_lr)
        self.largest_base_rate = max(self.base_rates.values())

    def rates(self, scale: float) -> dict[str, float]:
        """Each group's learning rate at plateau scale ``scale``."""
        return {group: rate * float(scale) for group, rate in self.base_rates.items()}

    def finished(self, scale):
        """Whether a seed at plateau ``scale`` has finished (works on jax and numpy arrays)."""
        return scale * self.largest_base_rate < self.stop_lr
