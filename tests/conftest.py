import os
from pathlib import Path

import pytest


# Two shared cores: one intra-op thread per process keeps multi-process tests from thrashing.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_BENCHMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny Qwen2 model and byte-level chat tokenizer saved like a Hub checkpoint (no download)."""
    from hpt_trl.builtin_task.tiny_model import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2")))
