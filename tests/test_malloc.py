"""The command line on tcmalloc (deepnmf_jax._malloc): real processes re-executed with the library
preloaded, keeping their PID; the opt-out; a bad value is one line. The speed it buys is measured
by the benchmarks, not here."""

import subprocess
import sys

import pytest

from deepnmf_jax import _malloc
from tests.runners import ROOT, subprocess_env

PROGRAM = (
    "import os; from deepnmf_jax import _malloc; _malloc.exec_on_tcmalloc(); "
    "print(_malloc.loaded(), os.getpid(), os.environ.get('LD_PRELOAD', ''))"
)


def _python(program: str, **env) -> tuple[subprocess.Popen, str]:
    """``python -c PROGRAM`` with the suite's environment, ``DEEPNMF_MALLOC`` unset unless given."""
    environment = subprocess_env(**env)
    if _malloc.MALLOC_ENV not in env:
        environment.pop(_malloc.MALLOC_ENV, None)
    process = subprocess.Popen(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    return process, output.strip().splitlines()[-1]


@pytest.mark.skipif(_malloc.find_tcmalloc() is None, reason="tcmalloc is not installed")
def test_the_process_reexecutes_itself_on_tcmalloc_and_keeps_its_pid_and_preloads():
    process, line = _python(PROGRAM, LD_PRELOAD="libm.so.6")
    allocator, pid, preload = line.split(" ", 2)
    assert allocator == "tcmalloc" and int(pid) == process.pid
    assert preload.split() == [_malloc.find_tcmalloc(), "libm.so.6"]  # the user's preload kept


def test_deepnmf_malloc_system_keeps_the_c_librarys_allocator():
    _, line = _python(PROGRAM, DEEPNMF_MALLOC="system", LD_PRELOAD="")
    assert line.split(" ", 1)[0] == "system"


def test_a_bad_deepnmf_malloc_is_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "deepnmf_jax", "train", "--help"],
        cwd=ROOT,
        env=subprocess_env(DEEPNMF_MALLOC="fast"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: DEEPNMF_MALLOC must be 'tcmalloc' or 'system', got 'fast'"
