"""The notebooks run from top to bottom (at a small size), so they cannot rot."""

import os

import nbclient
import nbformat
import pytest

from tests.test_train import ROOT


def _execute(name: str):
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    os.environ["DEEPNMF_NOTEBOOK_SMALL"] = "1"  # inherited by the kernel
    try:
        client = nbclient.NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(ROOT / "notebooks")}},
        )
        client.execute()
    finally:
        del os.environ["DEEPNMF_NOTEBOOK_SMALL"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    return outputs, text


def test_gradient_check_notebook_executes():
    outputs, text = _execute("gradient_check.ipynb")
    assert "small run" in text and "residual at t = 20" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # the plots were drawn


@pytest.mark.slow
def test_nnx_example_notebook_trains_a_few_steps():
    _, text = _execute("nnx_example.ipynb")
    assert "('patches', 'kernel'): (75, 16)" in text  # the NMF weights, selected by their type
    assert "mean loss of the first and the last 5 steps" in text and "test accuracy" in text
