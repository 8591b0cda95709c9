"""Adversarial robustness (deepnmf_jax.evaluation.attack): PGD against a case worked out by hand,
and ``deepnmf attack`` on the smoke sweep's runs (unrolled, approximate and transfer)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepnmf_jax import machine
from deepnmf_jax.errors import ConfigError
from deepnmf_jax.evaluation import attack, runs
from tests.test_benchmarks import _benchmark_module
from tests.test_evaluate import CNMF, CNN, _evaluate


def _linear(a):
    """probs = softmax([a . x, 0]): for label 0 the loss -log p_0 falls as a . x grows, so its
    gradient has the sign of -a everywhere, and PGD ends at the corner x - eps sign(a)."""

    def apply(images):
        score = jnp.sum(images * a, axis=(1, 2, 3))
        return jax.nn.softmax(jnp.stack([score, jnp.zeros_like(score)], -1), -1)

    return attack.Attacker(apply, apply)


def test_pgd_reaches_the_corner_worked_out_by_hand():
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(1, 4, 4, 3)), jnp.float32)
    images = jnp.asarray(rng.uniform(0.2, 0.8, (5, 4, 4, 3)), jnp.float32)
    labels = jnp.zeros(5, jnp.int32)
    eps = 0.03
    # from any random start in the ball, 8 steps of eps / 4 reach (and stay at) the corner
    result = _linear(a).pgd(images, labels, jax.random.key(1), jnp.float32(eps), 8)
    np.testing.assert_allclose(result, images - eps * np.sign(a), atol=1e-6)
    # inside the ball and inside [0, 1] at every radius, and eps = 0 changes nothing
    edge = jnp.zeros_like(images).at[:, 0].set(1.0)
    for radius in (0.0, 0.01, 0.5):
        out = _linear(a).pgd(edge, labels, jax.random.key(2), jnp.float32(radius), 3)
        assert float(jnp.max(jnp.abs(out - edge))) <= radius + 1e-6
        assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_bad_values_are_one_line():
    assert attack.parse_eps("1/255, 0.5,8/255") == [1 / 255, 0.5, 8 / 255]
    for text, message in (("2", r"must be in \[0, 1\]"), ("x", "not a number"), ("", "at least")):
        with pytest.raises(ConfigError, match=message):
            attack.parse_eps(text)
    with pytest.raises(ConfigError, match="some of"):
        attack.parse_gradients("unrolled,full")


def test_attack_command_on_trained_runs(local_sweep, tmp_path):
    folder, _ = local_sweep
    run = tmp_path / "cnmf"
    shutil.copytree(folder / CNMF, run, ignore=shutil.ignore_patterns("eval"))
    args = ["--limit", "10", "--steps", "2", "--eps", "2/255,8/255"]
    gradients = ["--gradient", "unrolled,approximate,transfer", "--source-run", folder / CNN]
    code, output = _evaluate("attack", "--workdir", run, *args, *gradients)
    assert code == 0, output
    report = json.loads((run / "eval" / "attack.json").read_text())
    assert report["images"] == 10 and report["steps"] == 2 and report["step_size"] == "eps / 4"
    assert "population statistics" in report["batch_norm"]
    rows = {row["gradient"]: row for row in report["results"]}
    assert set(rows) == {"unrolled", "approximate", "transfer"}
    for row in rows.values():
        assert list(row["robust_accuracy"]) == [f"{2 / 255:.6g}", f"{8 / 255:.6g}"]
        assert all(0 <= v <= 1 for v in row["clean_accuracy"])
    assert (run / "eval" / "attack.png").stat().st_size > 10_000
    # APGD-CE writes its own file beside PGD's, which stays
    code, output = _evaluate(
        "attack", "--workdir", run, *args, "--method", "apgd", "--gradient", "approximate"
    )
    assert code == 0, output
    apgd_report = json.loads((run / "eval" / "attack_apgd.json").read_text())
    assert apgd_report["method"] == "apgd" and "APGD" in apgd_report["step_size"]
    (row,) = apgd_report["results"]
    assert (
        row["gradient"] == "approximate"
        and row["clean_accuracy"] == rows["approximate"]["clean_accuracy"]
    )
    assert all(0 <= v <= 1 for values in row["robust_accuracy"].values() for v in values)
    assert json.loads((run / "eval" / "attack.json").read_text()) == report
    # the robustness report's row: both attacks, each with the CPU it ran on
    out = tmp_path / "robustness.json"
    report_script = _benchmark_module("robustness_report")
    assert report_script.main([str(run), "--out", str(out)]) == 0
    (summary,) = json.loads(out.read_text())["rows"]
    assert summary["model"] == "cnmf" and "clean_accuracy" not in summary  # no evaluate yet
    assert set(summary["attack"]["gradients"]) == {"unrolled", "approximate", "transfer"}
    assert summary["attack_apgd"]["gradients"]["approximate"]["clean_accuracy"] == float(
        np.mean(rows["approximate"]["clean_accuracy"])
    )
    for eps255, key in (
        (2, f"{2 / 255:.6g}"),
        (8, f"{8 / 255:.6g}"),
    ):  # as the docs' table reads it
        for gradient in ("unrolled", "transfer"):
            expected = float(np.mean(rows[gradient]["robust_accuracy"][key]))
            assert report_script.robust_at(summary, eps255, gradient) == expected
    cpu = machine.machine_info()["cpu"]
    assert summary["cpu"] == {"attack": cpu, "attack_apgd": cpu}
    code, output = _evaluate("attack", "--workdir", run, *args, "--method", "fgsm")
    assert code == 1 and "--method must be one of ('pgd', 'apgd'), got 'fgsm'" in output, output
    # a run without population statistics: one line naming the command that makes them
    shutil.rmtree(run / "population")
    code, output = _evaluate("attack", "--workdir", run, *args)
    assert code == 1 and "deepnmf population-stats --workdir" in output, output
    assert len([line for line in output.splitlines() if line.startswith("error:")]) == 1


def test_attacks_compute_cnn_layers_as_slices_and_a_matmul(local_sweep):
    """A one-seed training program computes a CNN a-layer as one convolution, whose gradient XLA:CPU
    computes far slower inside the attack's loop (18 s against 4 s for the released CNN): every
    attack's gradient goes through the slices-and-matmul form instead."""
    folder, _ = local_sweep
    run = runs.open_run(folder / CNN)
    images, labels = jnp.zeros((2, 32, 32, 3)), jnp.zeros(2, jnp.int32)
    crop = run.config.augment.crop_size
    trained = jax.make_jaxpr(
        lambda x: run.program.ctx.model.apply(run.variables(0), x[:, :crop, :crop], train=False)
    )(images)
    assert "conv_general_dilated" in str(trained)  # what the run trained with
    for gradient in ("approximate", "unrolled"):
        (maker,) = attack.attackers(run, gradient)
        loss_grad = jax.grad(lambda x, m=maker: jnp.sum(m.losses(x, labels)[0]))
        assert "conv_general_dilated" not in str(jax.make_jaxpr(loss_grad)(images)), gradient
