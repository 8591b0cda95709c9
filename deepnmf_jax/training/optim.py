"""The optimiser and the learning-rate schedule: Adam (or AdamW) per parameter group, one Schedule.

The reference (``mahbodnr/deep_nmf:tools/make_optimize.py``) runs one ``torch.optim.Adam`` per parameter
group (a-layers lr 0.01; b-layers and BatchNorm lr 0.001; betas (0.9, 0.999), eps 1e-8) and one
``ReduceLROnPlateau(factor=0.1, patience=10, threshold=1e-4 relative, eps=1e-10)`` per optimiser, all
stepped once per epoch with the same value: the sum of the epoch's per-batch training losses.

Here that is ``optax.partition`` of three Adams at the groups' base rates (a parameter's group
comes from the layer that owns it, :data:`GROUP_OF_ROLE`: the NMF and patch layers at ``lr_a``,
normalisation layers at ``lr_bn``, every other layer at ``lr_b``, wherever they sit in a model), whose updates the train
step multiplies by :meth:`Schedule.scale`: the scale of one ``optax.contrib.reduce_on_plateau``,
advanced once per epoch as torch's scheduler is (a reduction takes effect from the next epoch's first
step), times a per-step multiplier for the optax schedules (``optim.schedule = "cosine"`` or
``"onecycle"``, which go 0 -> 1 -> ``final_lr_fraction``). Scaling Adam's (or AdamW's) update by a
factor is the same as scaling its learning rate. Two differences of optax had to be bridged:

* torch reduces on the (patience + 1)-th consecutive epoch without improvement (``num_bad > patience``),
  optax on the patience-th (``count == patience``): optax is given ``patience + 1``.
* torch skips a reduction smaller than its ``eps=1e-10``; one shared scale cannot. The first seven
  reductions are identical; at the eighth, torch leaves the 1e-3 groups at 1e-10 while the scale takes
  them to 1e-11. The run stops right then (every lr < 1e-9), so no step ever uses that value.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from deepnmf_jax.training.config import SCHEDULES

PARAM_GROUPS = ("a", "b", "bn")
GROUP_OF_ROLE = {"nmf": "a", "patch": "a", "mix": "b", "other": "b", "norm": "bn"}
"""A parameter's group by the role of its layer (:func:`deepnmf_jax.models.anatomy`)."""


def param_group_labels(param_roles: dict[tuple[str, ...], str]):
    """A tree of group names (``"a"``, ``"b"``, ``"bn"``) from ``{parameter path: layer role}``."""
    return traverse_util.unflatten_dict(
        {path: GROUP_OF_ROLE[role] for path, role in param_roles.items()}
    )


def batch_size_factor(optim_config, batch_size: int) -> float:
    """How the base learning rates scale with the batch size: 1 (``"none"``, the reference), or
    ``batch_size / reference_batch_size`` to the power 1 (``"linear"``) or 1/2 (``"sqrt"``)."""
    ratio = batch_size / optim_config.reference_batch_size
    return {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[optim_config.lr_batch_scaling]


def group_learning_rates(optim_config, batch_size: int | None = None) -> dict[str, float]:
    """Each group's base (peak) learning rate, scaled for ``batch_size`` (:func:`batch_size_factor`)."""
    factor = 1.0 if batch_size is None else batch_size_factor(optim_config, batch_size)
    rates = {"a": optim_config.lr_a, "b": optim_config.lr_b, "bn": optim_config.lr_bn}
    return {group: rate * factor for group, rate in rates.items()}


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


def decay_mask(param_roles: dict[tuple[str, ...], str]):
    """Which leaves weight decay applies to: every ``kernel`` except the NMF layers' U, whose
    column normalisation makes its scale meaningless (decaying it only changes the step size)."""
    return traverse_util.unflatten_dict(
        {path: path[-1] == "kernel" and role != "nmf" for path, role in param_roles.items()}
    )


def make_optimizer(
    optim_config, param_roles: dict[tuple[str, ...], str], batch_size: int | None = None
) -> optax.GradientTransformation:
    """Adam per parameter group at the groups' base learning rates (before :meth:`Schedule.scale`);
    AdamW with decoupled ``weight_decay`` (on :func:`decay_mask`'s leaves) where it is > 0.

    Args:
      optim_config: the config's ``optim`` section.
      param_roles: ``{parameter path: role of its layer}`` (:meth:`Anatomy.param_roles`).
      batch_size: scales the base rates (``optim.lr_batch_scaling``).
    """
    mask = decay_mask(param_roles)

    def adam(learning_rate):
        if optim_config.weight_decay > 0:
            return optax.adamw(
                learning_rate,
                optim_config.b1,
                optim_config.b2,
                optim_config.eps,
                weight_decay=optim_config.weight_decay,
                mask=mask,
            )
        return optax.adam(learning_rate, optim_config.b1, optim_config.b2, optim_config.eps)

    rates = group_learning_rates(optim_config, batch_size)
    transforms: dict[Hashable, optax.GradientTransformation] = {
        name: adam(rate) for name, rate in rates.items()
    }
    return _standard_promotion(optax.partition(transforms, param_group_labels(param_roles)))


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


def step_multiplier(optim_config, total_steps: int, warmup_steps: int) -> optax.Schedule | None:
    """The per-step factor of the optax schedules (peak 1), or None for ``"plateau"``.

    ``"cosine"``: linear warm-up from ``initial_lr_fraction`` to 1 over ``warmup_steps``, then a
    cosine decay to ``final_lr_fraction`` at ``total_steps``. ``"onecycle"``: optax's
    ``cosine_onecycle_schedule`` (cosine up, then cosine down) with the peak at ``warmup_steps``.
    """
    kind = optim_config.schedule
    initial, final = optim_config.initial_lr_fraction, optim_config.final_lr_fraction
    if kind == "plateau":
        return None
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=initial,
            peak_value=1.0,
            warmup_steps=warmup_steps,
            decay_steps=total_steps,
            end_value=final,
        )
    if kind == "onecycle":
        return optax.cosine_onecycle_schedule(
            transition_steps=total_steps,
            peak_value=1.0,
            pct_start=warmup_steps / total_steps,
            div_factor=1.0 / initial,
            final_div_factor=initial / final,
        )
    raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {kind!r}")


class Schedule:
    """The learning-rate schedule of a run in one place: base rates per group, the plateau state's
    scale (one per seed, in ``TrainState.plateau_state``), the per-step multiplier and the stop rule.

    The train step multiplies the optimiser's updates by :meth:`scale`; :meth:`advance` moves the
    plateau once per epoch (only for ``schedule="plateau"``); a seed is :meth:`finished` when every
    one of its learning rates (base rate x plateau scale) is below ``stop_lr``, the reference's stop:
    the train step freezes a finished seed, the loop stops when every seed is finished, and the
    report counts each seed's trained epochs by the same rule. The optax schedules end at
    ``num_epochs`` instead.

    Args:
      optim_config: ``config.optim``.
      steps_per_epoch, num_epochs: the length of the optax schedules.
      batch_size: scales the base rates (``optim.lr_batch_scaling``).
    """

    def __init__(self, optim_config, steps_per_epoch: int, num_epochs: int, batch_size=None):
        self.kind = optim_config.schedule
        self.base_rates = group_learning_rates(optim_config, batch_size)
        self.stop_lr = float(optim_config.stop_lr)
        self.largest_base_rate = max(self.base_rates.values())
        self.plateau = make_plateau(optim_config)
        total_steps = max(1, steps_per_epoch * num_epochs)
        warmup = min(total_steps - 1, round(optim_config.warmup_epochs * steps_per_epoch))
        self.multiplier = step_multiplier(optim_config, total_steps, max(warmup, 0))

    def init(self, params):
        """The plateau state (scale 1) of one seed."""
        return self.plateau.init(params)

    def advance(self, plateau_state, epoch_loss):
        """The plateau state after an epoch with summed training loss ``epoch_loss``."""
        if self.kind != "plateau":
            return plateau_state
        _, plateau_state = self.plateau.update({}, plateau_state, value=epoch_loss)
        return plateau_state

    def scale(self, plateau_state, step):
        """The factor on the base rates at train step ``step`` (0-based): plateau x per-step."""
        scale = plateau_state.scale
        if self.multiplier is None:
            return scale
        with jax.numpy_dtype_promotion("standard"):
            return scale * jnp.asarray(self.multiplier(step), scale.dtype)

    def rates(self, scale: float) -> dict[str, float]:
        """Each group's learning rate at scale ``scale``."""
        return {group: rate * float(scale) for group, rate in self.base_rates.items()}

    def finished(self, plateau_scale):
        """Whether a seed at plateau scale ``plateau_scale`` has finished (jax or numpy arrays)."""
        return plateau_scale * self.largest_base_rate < self.stop_lr


def ema_update(ema_params, params, decay: float, step):
    """An exponential moving average of the parameters, for evaluation:
    ``ema <- d ema + (1 - d) params`` with ``d = min(decay, (1 + step) / (10 + step))``, so the
    average warms up instead of starting biased towards the initial parameters (``step`` is the
    number of updates already applied before this one)."""
    with jax.numpy_dtype_promotion("standard"):
        d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
        return jax.tree_util.tree_map(
            lambda e, p: (d * e + (1 - d) * p).astype(p.dtype), ema_params, params
        )
