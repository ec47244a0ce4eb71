"""The offline demo through train.py: the built-in task and base model, held-out accuracy, metrics and figure,
and the paper's baselines as methods of the same script (CI-sized: a tiny base budget, a few steps)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train as train_script  # noqa: E402
from hpt_trl.builtin_task.demo import BUILTIN_DATASET, ArithmeticTaskArguments  # noqa: E402


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


@pytest.mark.parametrize(
    ("argv", "recipe", "method", "max_steps"),
    [
        (["--method", "grpo"], "toy_grpo.yaml", "grpo", 300),
        (["--method=sft_then_grpo"], "toy_sft_then_grpo.yaml", "sft_then_grpo", 300),
        (["--max_steps", "30"], "toy_hpt.yaml", "hpt", 30),
    ],
)
def test_arguments_without_a_config_change_the_demo_instead_of_dropping_it(argv, recipe, method, max_steps):
    command = train_script.command_line(argv)
    assert command == ["--config", str(ROOT / "recipes" / recipe), *argv]
    script_args, args, model_args, _ = train_script.make_parser().parse_args_and_config(args=command)
    assert script_args.method == method and args.max_steps == max_steps
    # The demo recipe's CPU settings stay (a dropped recipe failed on TRL's bf16 default on a CPU machine).
    assert args.use_cpu and not args.bf16 and script_args.dataset_name == BUILTIN_DATASET


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
    # One short line a step (disable_tqdm), not transformers' full metrics dict.
    assert "'completions/mean_length'" not in result.stdout and "step 4/4: loss=" in result.stdout
    out = tmp_path / "hpt"
    records = metrics(out)
    assert [r["step"] for r in records if "heldout/accuracy" in r] == [0, 2, 4]
    # A held-out measurement at a step does not cancel that step's training log.
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert {"hpt/sft_prompt_ratio", "completions/mean_length", "entropy"} <= {k for r in records for k in r}
    figure = out / "training_dynamics.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize(("method", "ratio"), [("sft", 1.0), ("grpo", 0.0)])
def test_baselines_are_the_same_trainer_with_another_gate(tmp_path, method, ratio):
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        train_script.main(*train_script.make_parser().parse_args_and_config(args=small(tmp_path, method, steps=2)))
        # A built-in task run takes a fixed thread count (task_num_threads), so its figures do not depend on the cores.
        assert torch.get_num_threads() == ArithmeticTaskArguments().task_num_threads == 2
    finally:
        torch.set_num_threads(threads)
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


def test_metrics_file_logs_each_step_once_after_a_resume(tmp_path):
    """Killed at step 15 after checkpoint-10: the resumed run trains 11-15 again and must not log them twice."""
    from transformers import TrainerControl, TrainerState

    from hpt_trl.run_callbacks import MetricsFileCallback

    path = tmp_path / "metrics.jsonl"

    def log(callback, step, **logs):
        callback.on_log(None, TrainerState(global_step=step), TrainerControl(), logs=logs)

    first = MetricsFileCallback(path, resume_step=0)
    for step in range(16):
        log(first, step, **{"heldout/accuracy": 0.1} if step % 10 == 0 else {"loss": 1.0})
    path.write_text(path.read_text() + '{"step": 15, "lo')  # a line cut off by the kill
    resumed = MetricsFileCallback(path, resume_step=10)
    for step in range(11, 21):
        log(resumed, step, loss=0.5)
    steps = [r["step"] for r in metrics(tmp_path)]
    assert steps == list(range(21))
    assert [r.get("loss") for r in metrics(tmp_path)][11:] == [0.5] * 10

    # A second stage resumed at its step 3 keeps the first stage (steps <= 20) and its own steps up to 20 + 3.
    stage_two = MetricsFileCallback(path, step_offset=20, resume_step=0)
    for step in range(1, 6):
        log(stage_two, step, loss=0.25)
    again = MetricsFileCallback(path, step_offset=20, resume_step=3)
    log(again, 4, loss=0.125)
    assert [r["step"] for r in metrics(tmp_path)] == list(range(25))

    # Without resume_step the file is appended to as it is (the Python API's default).
    log(MetricsFileCallback(path), 25, loss=0.0625)
    assert [r["step"] for r in metrics(tmp_path)] == list(range(26))

    # A fresh start (step 0 of the first stage) replaces what an attempt without any checkpoint left.
    log(MetricsFileCallback(path, resume_step=0), 0, **{"heldout/accuracy": 0.2})
    assert metrics(tmp_path) == [{"step": 0, "heldout/accuracy": 0.2}]


def test_training_dynamics_plot_is_monotone_in_steps(tmp_path, monkeypatch):
    """An old metrics file that holds steps 11-15 twice must not draw a line back from 15 to 11."""
    from matplotlib.axes import Axes

    from hpt_trl.builtin_task.demo import plot_training_dynamics

    steps = [*range(16), *range(11, 21)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "heldout/accuracy": s / 100}) + "\n" for s in steps))
    drawn = []
    original = Axes.plot
    monkeypatch.setattr(
        Axes, "plot", lambda self, x, y, *a, **k: drawn.append(list(x)) or original(self, x, y, *a, **k)
    )
    assert plot_training_dynamics(path, tmp_path / "figure.png").is_file()
    assert drawn == [list(range(21))]


def test_progress_bar_does_not_write_the_metrics_dict(capsys):
    from transformers import TrainerControl, TrainerState

    from hpt_trl.run_callbacks import CompactPrinterCallback, CompactProgressCallback

    callback, state = CompactProgressCallback(), TrainerState(max_steps=2, is_world_process_zero=True)
    callback.on_train_begin(None, state, TrainerControl())
    callback.on_log(None, state, TrainerControl(), logs={"loss": 0.5, "completions/mean_length": 12.0, "reward": 1})
    assert callback.training_bar.postfix == "loss=0.5, reward=1"
    callback.on_train_end(None, state, TrainerControl())
    captured = capsys.readouterr()
    assert "completions/mean_length" not in captured.out + captured.err

    state.global_step = 1
    CompactPrinterCallback().on_log(None, state, TrainerControl(), logs={"loss": 0.5, "completions/mean_length": 12.0})
    assert capsys.readouterr().out == "step 1/2: loss=0.5\n"


def test_base_model_pretraining_says_when_it_stops_early(tmp_path, capsys):
    from hpt_trl.builtin_task.arithmetic_task import TaskSpec
    from hpt_trl.builtin_task.base_model import get_base_model

    settings = dict(num_steps=40, batch_size=4, warmup_steps=1, num_validation=4, task=TaskSpec("+-", 9, 5))
    get_base_model(tmp_path, target_accuracy=0.0, eval_every=2, show_progress=True, **settings)
    captured = capsys.readouterr()
    assert "pretraining stopped early, as intended, at step 2 of 40" in captured.out + captured.err
    assert re.search(r"validation accuracy \d\.\d\d reached the target 0\.0", captured.out + captured.err)
