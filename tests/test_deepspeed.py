"""`accelerate launch` with DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes: training, checkpoints, and a stopped run
that resumes to the same step count and parameters as an uninterrupted one."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from hpt_testing import write_tiny_recipe
from safetensors.torch import load_file


ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"),
]


def launch(stage: int, recipe: str, *overrides: str) -> None:
    command = [
        "accelerate",
        "launch",
        "--config_file",
        str(ROOT / "accelerate_configs" / f"deepspeed_zero{stage}.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        str(ROOT / "train.py"),
        "--config",
        recipe,
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_trains_and_resumes_exactly(stage, tiny_model_dir, tmp_path):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir)
    # ZeRO-3 gathers parameters on every forward: run it packed, where processes forward different token counts.
    packing = ("--padding_free", "true") if stage == 3 else ()
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    launch(stage, recipe, "--output_dir", str(stopped), "--max_steps", "2", *packing)
    checkpoint = stopped / "checkpoint-2"
    # Two processes really ran DeepSpeed: one RNG state and one ZeRO optimizer shard per rank.
    assert sorted(p.name for p in checkpoint.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert len(list((checkpoint / "global_step2").glob("zero_pp_rank_*_optim_states.pt"))) == 2

    launch(stage, recipe, "--output_dir", str(stopped), "--max_steps", "4", *packing)  # resumes from checkpoint-2
    launch(stage, recipe, "--output_dir", str(straight), "--max_steps", "4", *packing)

    def logged(run):
        state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
        return state["global_step"], [
            (e["step"], e["loss"], e["hpt/sft_prompt_ratio"]) for e in state["log_history"] if "loss" in e
        ]

    assert logged(stopped) == logged(straight)
    assert logged(stopped)[0] == 4
    resumed, uninterrupted = load_file(stopped / "model.safetensors"), load_file(straight / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all((resumed[name] == uninterrupted[name]).all() for name in resumed)
