"""Training and evaluation of several seeds at once: ``train_and_evaluate(config, workdir)``.

Every leaf of the train state has a leading seed axis and the train and eval steps are ``jax.vmap``-ed
over it, so ``config.num_seeds`` replicas (seeds ``config.seed + k``) train together: each with its
own initialisation and augmentation stream, all on the same data order unless
``config.data.order = "per_seed"``. The recipe is the reference's (spec section 3): batch 50,
augmentation inside the jitted step, Adam per parameter group, reduce-on-plateau on the summed
training loss once per epoch, stop when every learning rate is below ``config.optim.stop_lr`` or after
``config.num_epochs`` epochs. The test set is evaluated after every epoch, in order, in batches of
``config.eval_batch_size`` (BatchNorm uses batch statistics in evaluation too, by default).

A run is resumable: checkpoints are written every ``config.checkpoint_every_epochs`` epochs and on
Ctrl-C or SIGTERM (mid-epoch, with the position in the epoch); rerunning with the same ``workdir``
continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

import deepnmf_jax
from deepnmf_jax import (
    checkpointing,
    input_pipeline,
    models,
    optim,
    parallel,
    reporting,
)
from deepnmf_jax import workdir as workdir_lib
from deepnmf_jax.errors import ConfigError, NonFiniteLossError, TrainingInterrupted
from deepnmf_jax.steps import SEED_LOOPS, Trainer, TrainState, _seed_loop  # noqa: F401
from deepnmf_jax.validation import DATA_ORDERS, validate_config, validate_data  # noqa: F401

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Progress:
    """Where the run is: completed epochs, position in the current epoch and its running sums."""

    epoch: int = 0
    step_in_epoch: int = 0
    loss_sum: list[float] | None = None
    correct: list[int] | None = None
    best_mean_accuracy: float = -1.0
    finished: bool = False
    stopped_because: str | None = None


def _load_data(config) -> input_pipeline.Dataset:
    """The dataset, limited and with its validation split. In a multi-process run process 0 loads
    (and downloads, if it must) first and the others after it, from what it cached."""

    def load():
        return input_pipeline.load_dataset(
            config.data.name,
            source=config.data.source,
            data_dir=config.data.data_dir or None,
            cache_dir=config.data.cache_dir,
            download_url=config.data.download_url or None,
            progress=config.progress,
        )

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        data = load() if parallel.is_primary() else None
        multihost_utils.sync_global_devices("deepnmf_jax: dataset loaded by process 0")
        data = data or load()
    else:
        data = load()
    train = data.train.take(config.data.train_limit)
    validation = None
    size = config.data.validation_size
    if size:
        if size >= len(train):
            raise ConfigError(
                f"config.data.validation_size = {size} leaves no training images of {len(train)}"
            )
        train, validation = train.split_off(size)
    return dataclasses.replace(
        data, train=train, test=data.test.take(config.data.test_limit), validation=validation
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path
) -> dict | None:
    """Trains ``config.num_seeds`` seeds of ``config.model.name`` and returns the results dict.

    Writes to ``workdir``: ``config.json``, ``metrics.jsonl`` (one line per epoch),
    ``tensorboard/``, ``checkpoints/`` and ``best/``, and at the end ``results.json`` and
    ``learning_curves.png``. Rerunning with the same ``workdir`` resumes. In a multi-process run
    every process calls this; process 0 writes the logs and results and returns them, the others
    return None.

    Raises:
      TrainingInterrupted: Ctrl-C or SIGTERM; a checkpoint was saved first.
      NonFiniteLossError: the loss became NaN or inf (the message names the epoch and step).
      ConfigError: an invalid config, or one that differs from the run in ``workdir``.
    """
    # Everything is checked before anything is written, so a rejected start leaves no trace.
    validate_config(config)
    parallel.maybe_initialize_distributed(config.distributed)
    if not parallel.is_primary():
        log.setLevel(logging.WARNING)  # process 0 reports for everyone
    data = _load_data(config)
    validate_data(config, data)
    current = json.loads(config.to_json_best_effort())
    workdir = pathlib.Path(workdir)
    must_write_config = workdir_lib.check_config_matches(workdir, current)
    workdir = workdir_lib.prepare(workdir)
    with workdir_lib.exclusive(workdir) if parallel.is_primary() else contextlib.nullcontext():
        if parallel.is_primary() and must_write_config:
            workdir_lib.write_config(workdir, current)
        run = _Run(config, workdir, data)
        try:
            with run.stop.installed():
                while not run.progress.finished and run.progress.epoch < config.num_epochs:
                    run.train_epoch()
                    run.end_epoch()
        finally:
            run.close()
        return _finish(config, workdir, data, run.seeds, run.progress)


class _Run:
    """One training run's mutable state: the seed-stacked train state and where the run is."""

    def __init__(self, config, workdir: pathlib.Path, data: input_pipeline.Dataset):
        self.config, self.workdir, self.data = config, workdir, data
        self.steps_per_epoch = len(data.train) // config.batch_size
        log.info(
            "%s: %d train / %d test images from %s; %d steps per epoch; devices %s",
            data.name,
            len(data.train),
            len(data.test),
            data.source,
            self.steps_per_epoch,
            jax.devices(),
        )
        self.trainer = Trainer(
            config, data.num_classes, data.train.images.shape[1:], self.steps_per_epoch
        )
        self.seeds = [config.seed + k for k in range(config.num_seeds)]
        self.states = self.trainer.init(self.trainer.seed_keys(self.seeds))
        log.info(
            "model %s: %d parameters per seed",
            config.model.name,
            models.count_params(self.states.params) // len(self.seeds),
        )
        self.checkpoints = checkpointing.Checkpoints(workdir)
        self.progress = _Progress(loss_sum=[0.0] * len(self.seeds), correct=[0] * len(self.seeds))
        restored = self.checkpoints.restore_latest(
            checkpointing.abstract_like(self.states), verify=self._verify
        )
        if restored is not None:
            self.states, meta = restored
            self.progress = _Progress(**meta["progress"])
            log.info(
                "resumed from epoch %d, step %d of the next epoch",
                self.progress.epoch,
                self.progress.step_in_epoch,
            )
        self.primary = parallel.is_primary()
        if self.primary:  # epochs logged after the checkpoint, and a torn last line, go
            reporting.truncate_history(workdir, self.progress.epoch)
        self.writer = reporting.MetricsWriter(
            workdir, enabled=self.primary, tensorboard=config.tensorboard
        )
        # Each split lives on the devices as uint8 (and int32 labels), placed once.
        self.train_images = self.trainer.put(data.train.images)
        self.train_labels = self.trainer.put(data.train.labels)
        self.test_images = self.trainer.put(data.test.images)
        self.test_labels = self.trainer.put(data.test.labels)
        self.validation = None
        if data.validation is not None:
            self.validation = (
                self.trainer.put(data.validation.images),
                self.trainer.put(data.validation.labels),
            )
        self.order_keys = self.trainer.order_keys(self.seeds)
        self.stop = checkpointing.StopRequest()

    def train_epoch(self) -> None:
        """Runs the remaining steps of the next epoch; on a stop request saves and raises."""
        config, progress = self.config, self.progress
        epoch, first_step = progress.epoch + 1, progress.step_in_epoch
        self.learning_rates = self.trainer.learning_rates(self.states)
        self.lr_scales = self.trainer.lr_scales(self.states)
        order = self.trainer.epoch_order(self.order_keys, epoch, len(self.data.train))
        self.start_time = time.perf_counter()
        self.loss_sum = np.asarray(progress.loss_sum, np.float64)
        self.correct = np.asarray(progress.correct, np.int64)
        pending = []
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=first_step,
            desc=f"epoch {epoch}/{config.num_epochs}",
            unit="step",
            disable=not config.progress,
            leave=False,
            dynamic_ncols=True,
        )
        with bar:
            for step in range(first_step, self.steps_per_epoch):
                self.states, metrics = self.trainer.train_step(
                    self.states, self.train_images, self.train_labels, order
                )
                pending.append(metrics)
                last = step == self.steps_per_epoch - 1
                if len(pending) == config.log_every_steps or last or self.stop.requested:
                    self._collect(pending, epoch, step + 1 - len(pending))
                    bar.update(len(pending))
                    images = (step + 1 - first_step) * config.batch_size * len(self.seeds)
                    bar.set_postfix(
                        img_s=f"{images / (time.perf_counter() - self.start_time):.0f}",
                        loss=f"{self.loss_sum.mean() / ((step + 1) * config.batch_size):.4f}",
                    )
                    pending = []
                if self.stop.requested and not last:
                    self.progress = dataclasses.replace(
                        progress,
                        step_in_epoch=step + 1,
                        loss_sum=self.loss_sum.tolist(),
                        correct=self.correct.tolist(),
                    )
                    self._save(epoch - 1)
                    raise TrainingInterrupted(
                        f"stopped by {self.stop.requested} at epoch {epoch}, step "
                        f"{step + 1}/{self.steps_per_epoch}; checkpoint saved in {self.workdir}: "
                        "rerun the same command to resume"
                    )
        self.train_images_per_s = (
            (self.steps_per_epoch - first_step)
            * config.batch_size
            * len(self.seeds)
            / (time.perf_counter() - self.start_time)
        )

    def _collect(self, pending, epoch, first_step) -> None:
        fetched = jax.device_get(pending)  # replicated: every process holds all of it
        losses_now = np.stack([np.asarray(m["loss"], np.float64) for m in fetched])
        _check_finite(losses_now, epoch, first_step, self.seeds, self.config)
        self.loss_sum += losses_now.sum(0)
        self.correct += np.stack([np.asarray(m["correct"]) for m in fetched]).sum(0)

    def end_epoch(self) -> None:
        """Evaluates, advances the schedule, decides whether to stop, saves, logs."""
        config, seeds = self.config, self.seeds
        epoch = self.progress.epoch + 1
        test_accuracy = self.trainer.evaluate(self.states, self.test_images, self.test_labels)
        val_accuracy = None
        if self.validation is not None:
            val_accuracy = self.trainer.evaluate(self.states, *self.validation)
        epoch_loss = self.trainer.put(self.loss_sum.astype(np.float32), self.trainer.seed_sharded)
        self.states = self.trainer.update_plateau(self.states, epoch_loss)
        num_train = self.steps_per_epoch * config.batch_size
        record = {
            "epoch": epoch,
            "train_loss": (self.loss_sum / num_train).tolist(),
            "train_loss_sum": self.loss_sum.tolist(),
            "train_accuracy": (self.correct / num_train).tolist(),
            "test_accuracy": test_accuracy.tolist(),
            **({"val_accuracy": val_accuracy.tolist()} if val_accuracy is not None else {}),
            "learning_rates": self.learning_rates,
            "lr_scale": self.lr_scales.tolist(),
            "epoch_time_s": time.perf_counter() - self.start_time,
            "train_images_per_s": self.train_images_per_s,
        }
        mean_accuracy = float(np.mean(test_accuracy))
        # best/ is chosen on validation accuracy where there is a validation split
        selection = float(np.mean(val_accuracy if val_accuracy is not None else test_accuracy))
        is_best = selection > self.progress.best_mean_accuracy
        schedule = self.trainer.schedule
        finished = bool(np.all(schedule.finished(self.trainer.lr_scales(self.states))))
        stopped_because = None
        if finished:
            stopped_because = f"every learning rate below {schedule.stop_lr:g}"
        elif epoch == config.num_epochs:
            stopped_because = f"num_epochs = {config.num_epochs} reached"
        self.progress = _Progress(
            epoch=epoch,
            loss_sum=[0.0] * len(seeds),
            correct=[0] * len(seeds),
            best_mean_accuracy=max(selection, self.progress.best_mean_accuracy),
            finished=finished,
            stopped_because=stopped_because,
        )
        if (
            epoch % config.checkpoint_every_epochs == 0
            or stopped_because
            or self.stop.requested
            or is_best
        ):
            self._save(epoch, best=is_best)
        self.writer.write(record)  # after the save: a logged epoch is always a resumable one
        log.info(
            "epoch %d: train loss %.4f, train acc %.2f %%, test acc %.2f +/- %.2f %% over %d "
            "seeds, lr %s, %.1f s",
            epoch,
            float(np.mean(record["train_loss"])),
            100 * float(np.mean(record["train_accuracy"])),
            100 * mean_accuracy,
            100 * reporting.mean_std(test_accuracy)["std"],
            len(seeds),
            ", ".join(f"{g} {lr:.3g}" for g, lr in self.learning_rates.items()),
            record["epoch_time_s"],
        )
        if self.stop.requested:
            raise TrainingInterrupted(
                f"stopped by {self.stop.requested} after epoch {epoch}; checkpoint saved in "
                f"{self.workdir}: rerun the same command to resume"
            )

    def _verify(self, states, meta: dict) -> None:
        """Raises if a restored state differs from the checksum saved with it."""
        expected = meta.get("checksum")
        if expected is None:  # a checkpoint from before checksums were stored
            return
        if checkpointing.tree_checksum(self.trainer.fetch(states)) != expected:
            raise checkpointing.ChecksumMismatch("its arrays do not match their stored checksum")

    def _save(self, epoch: int, best: bool = False) -> None:
        step = epoch * self.steps_per_epoch + self.progress.step_in_epoch
        meta = {
            "progress": dataclasses.asdict(self.progress),
            "version": deepnmf_jax.__version__,
            "checksum": checkpointing.tree_checksum(self.trainer.fetch(self.states)),
        }
        self.checkpoints.save(step, self.states, meta, best=best)

    def close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()
        self.writer.close()


def _check_finite(
    losses_now: np.ndarray, epoch: int, first_step: int, seeds: list[int], config
) -> None:
    bad = np.argwhere(~np.isfinite(losses_now))
    if bad.size:
        row, column = bad[0]
        raise NonFiniteLossError(
            f"training loss is {losses_now[row, column]} at epoch {epoch}, step "
            f"{first_step + row + 1} (seed {seeds[column]}); stopping. Rerunning the same command "
            "resumes from the last checkpoint with the same data and augmentation, so it would "
            "most likely diverge again: rerun with lower learning rates (they may change on "
            f"resume), e.g. --config.optim.lr_a={config.optim.lr_a / 2:g}, or use another --workdir"
        )


def _finish(config, workdir: pathlib.Path, data, seeds, progress: _Progress) -> dict | None:
    """Writes results.json and the learning curves (process 0 only; the others return None)."""
    if not parallel.is_primary():
        return None
    history = reporting.read_history(workdir)
    if not history:
        raise RuntimeError(f"{workdir} has no metrics to report")
    results = {
        "model": config.model.name,
        "config": json.loads(config.to_json_best_effort()),
        "version": deepnmf_jax.__version__,
        "git_commit": reporting.git_commit(pathlib.Path(__file__).resolve().parent),
        "dataset": {
            "name": data.name,
            "source": data.source,
            "train_size": len(data.train),
            "test_size": len(data.test),
        },
        "epochs_completed": progress.epoch,
        "stopped_because": progress.stopped_because or "unknown",
        **reporting.summarize(history, seeds, optim.Schedule(config.optim).finished),
    }
    workdir_lib.atomic_write_text(workdir / "results.json", json.dumps(results, indent=2))
    reporting.plot_learning_curves(
        history, workdir / "learning_curves.png", title=f"{config.model.name} on {data.name}"
    )
    log.info("%s", reporting.format_summary(results))
    return results
