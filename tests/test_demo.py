"""The offline demo through train.py: the built-in task and base model, held-out accuracy, metrics and figure,
and the paper's baselines as methods of the same script (CI-sized: a tiny base budget, a few steps)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train as train_script  # noqa: E402


def small(tmp_path, method="hpt", steps=4) -> list[str]:
    return [
        "--config",
        str(ROOT / "recipes" / f"toy_{method}.yaml"),
        "--output_dir",
        str(tmp_path / method),
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        "16",
        "--task_num_train",
        "64",
        "--task_num_eval",
        "16",
        "--heldout_eval_steps",
        "2",
        "--base_model_cache",
        str(tmp_path.parent / "base-cache"),
        "--base_model_max_steps",
        "30",
        "--base_model_target_accuracy",
        "-1",
        "--disable_tqdm",
        "true",
    ]


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_no_arguments_means_the_demo_recipe():
    assert train_script.command_line([]) == ["--config", str(ROOT / "recipes" / "toy_hpt.yaml")]
    assert train_script.command_line(["--config", "x.yaml"]) == ["--config", "x.yaml"]


def test_demo_trains_reports_and_plots(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *small(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("Held-out accuracy (greedy, 16 problems, hpt): all ")
    assert "| easy " in last and "| hard " in last
    out = tmp_path / "hpt"
    records = metrics(out)
    assert [r["step"] for r in records if "heldout/accuracy" in r] == [0, 2, 4]
    assert {"hpt/sft_prompt_ratio", "completions/mean_length", "entropy"} <= {k for r in records for k in r}
    figure = out / "training_dynamics.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize(("method", "ratio"), [("sft", 1.0), ("grpo", 0.0)])
def test_baselines_are_the_same_trainer_with_another_gate(tmp_path, method, ratio):
    train_script.main(*train_script.make_parser().parse_args_and_config(args=small(tmp_path, method, steps=2)))
    ratios = [r["hpt/sft_prompt_ratio"] for r in metrics(tmp_path / method) if "hpt/sft_prompt_ratio" in r]
    assert ratios == [ratio, ratio]


def test_sft_then_grpo_splits_the_budget_in_two_stages(tmp_path):
    trainer = train_script.main(
        *train_script.make_parser().parse_args_and_config(args=small(tmp_path, "sft_then_grpo", steps=4))
    )
    out = tmp_path / "sft_then_grpo"
    assert (out / "stage1-sft" / "model.safetensors").exists() and (out / "model.safetensors").exists()
    assert trainer.state.global_step == 2 and trainer.args.gamma == -1
    gates = [(r["step"], r["hpt/sft_prompt_ratio"]) for r in metrics(out) if "hpt/sft_prompt_ratio" in r]
    assert gates == [(1, 1.0), (2, 1.0), (3, 0.0), (4, 0.0)]
    heldout_steps = [r["step"] for r in metrics(out) if "heldout/accuracy" in r]
    assert heldout_steps[0] == 0 and heldout_steps[-1] == 4
