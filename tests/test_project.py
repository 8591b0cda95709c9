"""The project's own promises: the README's commands are what a user and CI run, and its code runs."""

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _section(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split(f"## {name}", 1)[1].split("\n## ", 1)[0]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", text, flags=re.S)


def test_quick_start_is_two_commands_install_then_the_users_train_command():
    install, train = _blocks(_section("Quick start"), "bash")
    assert "\n" not in install and "\n" not in train
    assert install.startswith("python -m pip install")
    assert train.startswith("python train.py --config configs/cifar10.py")


def test_ci_runs_the_readme_test_command_verbatim():
    (test_command,) = _blocks(_section("Development"), "bash")
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_readme_is_short_and_its_links_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)", readme):
        assert (ROOT / target).exists(), target


def test_readme_nmf_layer_example_runs():
    (code,) = _blocks(_section("The NMF layer in ten lines"), "python")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["codes"].shape == (8, 24, 24, 32)
    assert namespace["nnx_layer"](namespace["images"]).shape == (8, 24, 24, 32)


def test_readme_speed_line_is_the_side_by_side_results():
    rows = json.loads((ROOT / "benchmarks" / "results" / "side_by_side_cpu.json").read_text())[
        "rows"
    ]
    ours = "after" if any(r["code"] == "after" for r in rows) else "ours"  # today's code
    ratios = {
        (r["model"], r["batch"]): r["vs_reference"]
        for r in rows
        if r["seeds"] == 1 and r["code"] == ours
    }
    line = _section("Results at a glance").split("Speed, one seed", 1)[1].split("[The table", 1)[0]
    quoted = [float(x) for x in re.findall(r"(\d+\.\d\d)x", line)]
    models = ("cnn", "cnn_1x1", "cnmf", "cnmf_1x1")
    expected = [round(ratios[m, b], 2) for b in (50, 256) for m in models]
    assert quoted == expected
    # and against the reference on tcmalloc, from the run that had both references
    rows = json.loads(
        (ROOT / "benchmarks" / "results" / "side_by_side_reference_tcmalloc.json").read_text()
    )["rows"]
    ratios = {
        (r["model"], r["batch"]): r["vs_reference_tcmalloc"] for r in rows if r["code"] == "after"
    }
    line = _section("Results at a glance").split("against the reference\non tcmalloc", 1)[1]
    quoted = [float(x) for x in re.findall(r"(\d+\.\d\d)x", line.split("(`benchmarks", 1)[0])]
    assert quoted == [round(ratios[m, b], 2) for b in (50, 256) for m in models]
