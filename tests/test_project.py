"""The project's own promises: the README's test command is what CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _readme_commands():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", quick_start, flags=re.S)


def test_quick_start_has_two_commands_and_ci_runs_the_test_command_verbatim():
    commands = _readme_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    main_job, test_command = commands
    assert "train.py --config configs/cifar10.py" in main_job
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
