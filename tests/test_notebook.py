"""notebooks/quickstart.ipynb runs top to bottom (CI-sized through its environment variables)."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient


ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HPT_QUICKSTART_STEPS", "4")
    monkeypatch.setenv("HPT_QUICKSTART_FAST", "1")
    monkeypatch.setenv("HPT_QUICKSTART_DIR", str(tmp_path / "quickstart"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "heldout/accuracy:" in outputs and "No CUDA GPU here" in outputs
    assert (tmp_path / "quickstart" / "hpt" / "training_dynamics.png").exists()
    metrics = (tmp_path / "quickstart" / "hpt" / "metrics.jsonl").read_text()
    assert "hpt/sft_prompt_ratio" in metrics
