"""Adversarial robustness: L-infinity PGD (Madry et al. 2018) against a run's test images.

Per radius eps: a uniform random start in the eps-ball, then ``steps`` signed-gradient steps of
``eps / 4`` on the cross-entropy ``-log p_y`` of the model's probabilities, each projected back onto
the ball and onto [0, 1]. The perturbation lives on the 32 x 32 image, before the centre crop, as a
corruption would. Robust accuracy is the accuracy on the last iterate. ``method="apgd"`` runs
APGD-CE instead (:mod:`deepnmf_jax.evaluation.apgd`: AutoAttack's step-size-free PGD with momentum),
whose robust accuracy counts an image as broken if any iterate is misclassified.

The gradient the attack follows (``gradient``):

* ``"unrolled"``: autodiff through every NMF iteration (rematerialised to fit in memory): the true
  gradient of the network that classifies;
* ``"approximate"``: the paper's one-step backward, as the model trains with it. It understates the
  attack where it misleads (gradient masking): compare it with the unrolled one;
* ``"transfer"``: adversarial images made on another run (the CNN twin, ``source``) with its own
  gradient, then classified by this one.

Inference uses BatchNorm population statistics (one image's prediction must not depend on the
others in its batch), so a run needs them (``deepnmf population-stats``). Every draw comes from
``seed``: the same images and starts for every model.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import json
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deepnmf_jax import machine
from deepnmf_jax._format import mean_std
from deepnmf_jax._plotting import pyplot
from deepnmf_jax.core.options import Unrolled
from deepnmf_jax.data.augment import center_crop
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.evaluation import apgd as apgd_lib
from deepnmf_jax.evaluation import runs
from deepnmf_jax.models import config as model_config
from deepnmf_jax.training import workdir as workdir_lib

GRADIENTS = ("unrolled", "approximate", "transfer")
METHODS = {"pgd": "eps / 4", "apgd": "2 eps, halved at checkpoints (APGD-CE)"}  # method: step size
DEFAULT_EPS = "1/255,2/255,4/255,8/255"
LOG_EPS = 1e-20


def parse_eps(text: str) -> list[float]:
    """``"1/255,8/255"`` or ``"0.01,0.03"`` -> radii, each in [0, 1] (one line otherwise)."""
    values = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            value = float(fractions.Fraction(part))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"--eps {part!r} is not a number or a fraction like 8/255") from None
        if not 0 <= value <= 1:
            raise ConfigError(f"--eps must be in [0, 1] (images are in [0, 1]), got {part}")
        values.append(value)
    if not values:
        raise ConfigError("--eps needs at least one radius, e.g. 8/255")
    return values


def parse_gradients(text: str) -> list[str]:
    names = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in names if g not in GRADIENTS]
    if unknown or not names:
        raise ConfigError(f"--gradient must name some of {GRADIENTS}, got {text!r}")
    return names


@dataclasses.dataclass(frozen=True)
class Attacker:
    """One seed of a run as a function of float (N, 32, 32, C) images: probabilities, and PGD."""

    apply: Callable  # images in [0, 1] -> probabilities (the network's forward)
    attack_apply: Callable  # the same forward with the backward the attack follows

    def losses(self, images, labels):
        """``-log p_y`` per image under the attack's forward, and whether it is classified right."""
        probs = self.attack_apply(images)
        picked = jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0]
        return -jnp.log(picked + LOG_EPS), jnp.argmax(probs, -1).astype(labels.dtype) == labels

    @functools.partial(jax.jit, static_argnums=(0, 5))
    def pgd(self, images, labels, key, eps, steps: int):
        """The last PGD iterate (module docstring) for a batch."""
        step = eps / 4

        def loss(x):
            return jnp.sum(self.losses(x, labels)[0])

        start = images + jax.random.uniform(key, images.shape, images.dtype, -eps, eps)
        start = jnp.clip(start, 0.0, 1.0)

        def body(_, x):
            x = x + step * jnp.sign(jax.grad(loss)(x))
            return jnp.clip(jnp.clip(x, images - eps, images + eps), 0.0, 1.0)

        return jax.lax.fori_loop(0, steps, body, start)

    @functools.partial(jax.jit, static_argnums=(0, 5))
    def apgd(self, images, labels, key, eps, steps: int):
        """APGD-CE's images for a batch (:mod:`deepnmf_jax.evaluation.apgd`): the last
        misclassified iterate of each image, or its start."""
        found = apgd_lib.apgd(lambda x: self.losses(x, labels), images, key, eps, steps)
        return found.adversarial

    @functools.partial(jax.jit, static_argnums=0)
    def predict(self, images):
        return jnp.argmax(self.apply(images), -1)


def attackers(run: runs.TrainedRun, gradient: str) -> list[Attacker]:
    """One :class:`Attacker` per seed; ``gradient`` ``"unrolled"`` or ``"approximate"``."""
    config = run.config
    crop = config.augment.crop_size
    model = run.program.ctx.model
    attack_model = model
    if gradient == "unrolled":
        if not config.model.is_preset:
            raise ConfigError(
                f"{run.folder}: the unrolled gradient needs a model built from its config, not "
                f"the user's {config.model.name}; attack it with --gradient approximate"
            )
        attack_model = model_config.build(
            config.model, run.num_classes, None, backward=Unrolled(remat=True), chunk_bytes=0
        )
    elif config.model.is_preset:
        # built from the config, not the training program's model: a one-seed program computes
        # CNN a-layers as one convolution, whose gradient XLA:CPU computes far slower inside the
        # attack's loop than the slices-and-matmul form the config builds outside training (the
        # same numbers up to float32 rounding)
        attack_model = model_config.build(config.model, run.num_classes, None)
    out = []
    for index in range(len(run.seeds)):
        variables = run.variables(index)

        def forward(images, m=model, v=variables):
            return m.apply(v, center_crop(images, crop), train=False)

        def attacked(images, m=attack_model, v=variables):
            return m.apply(v, center_crop(images, crop), train=False)

        out.append(Attacker(forward, attacked))
    return out


def run_attack(
    run: runs.TrainedRun,
    gradient: str,
    eps_values: Sequence[float],
    images: np.ndarray,
    labels: np.ndarray,
    steps: int,
    seed: int,
    batch: int,
    source: runs.TrainedRun | None = None,
    progress: Callable[[str], None] | None = None,
    method: str = "pgd",
) -> dict:
    """Clean and robust accuracy per seed of ``run`` under ``method`` (``"pgd"``, or ``"apgd"``:
    :mod:`deepnmf_jax.evaluation.apgd`) with ``gradient`` (module docstring):
    ``{"gradient", "clean_accuracy": [per seed], "robust_accuracy": {eps: [per seed]}, "seconds"}``.
    For ``"transfer"`` the adversarial images are made on ``source``'s first seed."""
    start = time.perf_counter()
    targets = attackers(run, "approximate")  # the forward is the same for every gradient
    if gradient == "transfer":
        if source is None:
            raise ConfigError("the transfer attack needs a source run")
        follow = "unrolled" if source.config.model.is_preset else "approximate"
        makers = attackers(source, follow)[:1] * len(targets)
    else:
        makers = attackers(run, gradient)
    x = jnp.asarray(images, jnp.float32) / 255.0
    y = jnp.asarray(labels, jnp.int32)
    key = jax.random.key(seed)
    starts = range(0, len(x), batch)

    def accuracy(target: Attacker, batches) -> float:
        predicted = np.concatenate([np.asarray(target.predict(b)) for b in batches])
        return float(np.mean(predicted == labels))

    clean = [accuracy(t, [x[k : k + batch] for k in starts]) for t in targets]
    robust: dict[str, list[float]] = {}
    for eps_index, eps in enumerate(eps_values):
        per_seed = []
        for target, maker in zip(targets, makers, strict=True):
            attack = getattr(maker, method)  # Attacker.pgd or Attacker.apgd (METHODS)
            adversarial = [
                attack(
                    x[k : k + batch],
                    y[k : k + batch],
                    jax.random.fold_in(jax.random.fold_in(key, eps_index), k),
                    jnp.float32(eps),
                    steps,
                )
                for k in starts
            ]
            per_seed.append(accuracy(target, adversarial))
        robust[f"{eps:.6g}"] = per_seed
        if progress:
            progress(f"{gradient} eps {eps:.4g}: {100 * np.mean(per_seed):.2f} %")
    return {
        "gradient": gradient,
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "seconds": time.perf_counter() - start,
    }


def plot(results: dict, path: pathlib.Path, title: str) -> None:
    """Accuracy against eps, one line per gradient (seed mean, min-max band)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for index, row in enumerate(results["results"]):
        eps = [0.0, *map(float, row["robust_accuracy"])]
        values = np.array([row["clean_accuracy"], *row["robust_accuracy"].values()]) * 100
        x = np.array(eps) * 255
        ax.plot(x, values.mean(1), marker="o", color=f"C{index}", label=row["gradient"])
        ax.fill_between(x, values.min(1), values.max(1), color=f"C{index}", alpha=0.2, lw=0)
    ax.set_xlabel("eps (x 1/255, L-infinity)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def command(selection, args, say: Callable[[str], None] = print) -> dict:
    """``deepnmf attack``: writes ``eval/attack.json`` and ``eval/attack.png`` of the run."""
    eps_values = parse_eps(args.eps)
    gradients = parse_gradients(args.gradient)
    if args.source_run and "transfer" not in gradients:
        gradients.append("transfer")
    if args.method not in METHODS:
        raise ConfigError(f"--method must be one of {tuple(METHODS)}, got {args.method!r}")
    if args.steps < 1 or args.limit < 1:
        raise ConfigError(f"--steps and --limit must be >= 1, got {args.steps} and {args.limit}")
    if "transfer" in gradients and not args.source_run:
        raise ConfigError("--gradient transfer needs --source-run, the run the attacks are made on")
    (folder,) = selection.workdirs
    workdir_lib.check_writable(pathlib.Path(folder) / "eval")
    run = selection.open(pathlib.Path(folder), require_population=True)
    source = None
    if "transfer" in gradients:
        source = dataclasses.replace(selection, workdirs=(pathlib.Path(args.source_run),)).open(
            pathlib.Path(args.source_run), require_population=True
        )
    test = runs.evaluation_split(run, "test").take(args.limit)
    results = []
    for gradient in gradients:
        row = run_attack(
            run,
            gradient,
            eps_values,
            test.images,
            test.labels,
            args.steps,
            args.seed,
            run.config.eval_batch_size,
            source,
            lambda line: say(f"  {line}"),
            args.method,
        )
        say(
            f"{gradient}: clean {100 * mean_std(row['clean_accuracy'])['mean']:.2f} %, "
            + ", ".join(
                f"eps {float(e) * 255:.3g}/255 {100 * np.mean(v):.2f} %"
                for e, v in row["robust_accuracy"].items()
            )
            + f" ({row['seconds'] / 60:.1f} min)"
        )
        results.append(row)
    report = {
        "run": str(folder),
        "model": run.config.model.name,
        "checkpoint": run.checkpoint,
        "seeds": run.seeds,
        "images": len(test),
        "steps": args.steps,
        "method": args.method,
        "step_size": METHODS[args.method],
        "seed": args.seed,
        "source_run": args.source_run,
        "batch_norm": run.note,
        "results": results,
        "machine": machine.machine_info(),
    }
    out = run.folder / "eval"
    out.mkdir(exist_ok=True)
    name = "attack" if args.method == "pgd" else f"attack_{args.method}"  # one file per method
    workdir_lib.atomic_write_text(out / f"{name}.json", json.dumps(report, indent=1))
    title = f"{run.config.model.name}: {args.method.upper()}, {len(test)} images"
    plot(report, out / f"{name}.png", title)
    say(f"{out / f'{name}.json'}, {out / f'{name}.png'}")
    return report
