"""The gradient-check notebook runs from top to bottom (at a small size), so it cannot rot."""

import os

import nbclient
import nbformat

from tests.test_train import ROOT


def test_gradient_check_notebook_executes(tmp_path):
    notebook = nbformat.read(ROOT / "notebooks" / "gradient_check.ipynb", as_version=4)
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
    assert "small run" in text and "residual at t = 20" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # the plots were drawn
