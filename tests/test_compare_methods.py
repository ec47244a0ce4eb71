"""benchmarks/compare_methods.py at reduced size: the premise checks on the real base model, the tuning on the
validation split, and a resumed comparison that trains nothing twice."""

import json
import os
import re

import pytest
import torch
from hpt_testing import load_benchmark

from hpt_trl.builtin_task.base_model import SHIPPED_BASE, SHIPPED_BASES


os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory):
    # Empty: the demo's real base model (default settings) ships; another base would be pretrained here.
    return tmp_path_factory.mktemp("base-cache")


def reduced(base_cache) -> list[str]:
    # Two optimizer steps a run: these tests check what is measured and printed, not what training reaches.
    return ["--max_steps", "2", "--warmup_steps", "0", "--per_device_train_batch_size", "16"] + [
        "--task_num_train", "32", "--task_num_eval", "8", "--heldout_eval_steps", "0",
        "--base_model_cache", str(base_cache),
    ]  # fmt: skip


def test_the_premise_is_measured_on_the_base_and_printed_with_the_runs(tmp_path, base_cache, capsys, monkeypatch):
    benchmark = load_benchmark("compare_methods")
    monkeypatch.setattr(benchmark, "LEARNING_RATES", ("1e-3", "1e-4"))
    argv = ["--methods", "sft", "grpo", "--seeds", "0", "1", "--num_eval", "200", "--num_sampled", "20"]
    argv += ["--output_dir", str(tmp_path)]
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        outcome = benchmark.main([*argv, "--", *reduced(base_cache)])
        # One torch thread a run, not the demo's two: the comparison runs two side by side on two cores.
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out

    # The base: what the paper's claim presupposes holds for the demo's base model.
    base = outcome["base"]
    assert base["easy"] >= 0.3 and base["hard"] <= 0.05, base
    checks = {name: (value, holds) for name, value, holds in outcome["premise"]}
    assert checks["base easy >= 0.3"] == (base["easy"], True)
    assert checks["base hard <= 0.05"] == (base["hard"], True)
    measured = re.escape(f"{base['easy']:+.3f}")
    assert re.search(rf"PASS +base easy >= 0\.3 +measured {measured}", printed)
    # The methods' rows: lifts over the base, mean over the seeds, of the chosen setting.
    for method, level, name in (("sft", "hard", "sft hard lift >= 0.15"), ("grpo", "easy", "grpo easy lift >= 0.05")):
        rows = outcome["final"][method]
        assert [r["seed"] for r in rows] == [0, 1]
        lift = sum(r["held_out"][level] for r in rows) / 2 - base[level]
        assert checks[name][0] == pytest.approx(lift)
        measured = re.escape(f"{lift:+.3f}")
        assert re.search(rf"(PASS|FAIL) +{re.escape(name)} +measured {measured}", printed)
    # Tuning: both rates tried at the tuning seed on the validation split, the better one taken for seed 1.
    results = json.loads((tmp_path / "results.json").read_text())["runs"]
    for method in ("sft", "grpo"):
        tried = {
            r["learning_rate"]: r["validation"]["greedy"] for r in results if r["method"] == method and r["seed"] == 0
        }
        assert set(tried) == {"1e-3", "1e-4"}
        chosen = outcome["chosen"][method]
        assert tried[chosen] == max(tried.values())
        assert [r["learning_rate"] for r in results if r["method"] == method and r["seed"] == 1] == [chosen]
        assert f"| {method} | {chosen} |" in printed
        # The tuning table: the method's validation accuracy at each rate, the chosen one in bold.
        cells = [f"**{tried[r]:.3f}**" if r == chosen else f"{tried[r]:.3f}" for r in ("1e-3", "1e-4")]
        assert f"| {method} | {' | '.join(cells)} |" in printed
    # Every row says which base it started from and where it ran.
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["base"]["fingerprint"] == benchmark.base_fingerprint(SHIPPED_BASE)
    assert saved["base"]["task"] == "builtin:arithmetic"
    for row in results:
        assert row["machine"] == benchmark.machine()
        assert set(row["held_out"]) == {"easy", "hard", "greedy", "pass@1", "pass@4", "pass@16"}
        assert 0.0 <= row["held_out"]["pass@1"] <= row["held_out"]["pass@4"] <= row["held_out"]["pass@16"] <= 1.0
        assert row["sft_ratio"][0] == (1.0 if row["method"] == "sft" else 0.0)

    # A rerun trains nothing and prints the same checks and table (the first run also printed its training).
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(benchmark, "train_run", no_training)
    benchmark.main([*argv, "--", *reduced(base_cache)])
    summary = printed[printed.index("Premise checks") :]
    assert capsys.readouterr().out.endswith(summary)
    with pytest.raises(ValueError, match="overrides"):
        benchmark.main([*argv, "--", *reduced(base_cache), "--gamma", "1"])
    # Runs from another base are not comparable: the results file refuses them.
    saved["base"]["fingerprint"] = "0" * 16
    (tmp_path / "results.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="another base model"):
        benchmark.main([*argv, "--", *reduced(base_cache)])


def test_the_second_task_runs_through_the_same_comparison(tmp_path, capsys):
    benchmark = load_benchmark("compare_methods")
    # A lookup base of a few steps: this checks the task goes through train.py and the scoring, not its premise.
    argv = ["--task", "builtin:lookup", "--methods", "sft", "--learning_rates", "1e-3", "--seeds", "0"]
    argv += ["--num_eval", "8", "--num_sampled", "4", "--output_dir", str(tmp_path)]
    tiny_base = ["--base_model_max_steps", "3", "--base_model_target_accuracy", "-1"]
    outcome = benchmark.main([*argv, "--", *reduced(tmp_path / "cache"), *tiny_base])
    (row,) = outcome["final"]["sft"]
    assert outcome["chosen"] == {"sft": "1e-3"} and row["learning_rate"] == "1e-3"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["base"]["task"] == "builtin:lookup"
    # The one base pretrained is the lookup task's, and the runs started from it.
    (base_dir,) = (tmp_path / "cache").iterdir()
    assert json.loads((base_dir / "base_model_settings.json").read_text())["task"] == {"num_symbols": 10}
    assert saved["base"]["fingerprint"] == benchmark.base_fingerprint(base_dir)
    assert "Held-out accuracy on builtin:lookup" in capsys.readouterr().out
    assert set(row["held_out"]) == {"easy", "hard", "greedy", "pass@1", "pass@4", "pass@16"}


def test_the_rearrangement_task_runs_on_its_shipped_base_with_transferred_rates(tmp_path, base_cache, capsys):
    benchmark = load_benchmark("compare_methods")
    # Another comparison's tuning runs (validation scores only): grpo chose 1e-3 there.
    tuned = [
        {"method": "grpo", "seed": 0, "learning_rate": rate, "validation": {"greedy": score}}
        for rate, score in (("3e-4", 0.4), ("1e-3", 0.5), ("3e-3", 0.1))
    ]
    (tmp_path / "arithmetic.json").write_text(json.dumps({"runs": tuned}))
    argv = ["--task", "builtin:rearrange", "--methods", "grpo", "--rates_from", str(tmp_path / "arithmetic.json")]
    argv += ["--seeds", "0", "--num_eval", "8", "--num_sampled", "4", "--output_dir", str(tmp_path)]
    outcome = benchmark.main([*argv, "--", *reduced(base_cache)])
    assert outcome["chosen"] == {"grpo": "1e-3"}
    assert "| grpo | 0.400 | **0.500** | 0.100 |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())
    # One run, at the transferred rate: nothing tuned on this task.
    assert [(r["method"], r["seed"], r["learning_rate"]) for r in saved["runs"]] == [("grpo", 0, "1e-3")]
    assert saved["base"]["task"] == "builtin:rearrange"
    assert saved["base"]["fingerprint"] == benchmark.base_fingerprint(SHIPPED_BASES[1])
    assert not list(base_cache.iterdir())  # nothing pretrained
    # A method the other comparison did not tune is refused, naming it.
    with pytest.raises(ValueError, match="no run of sft at seed 0"):
        benchmark.main([*argv[:3], "sft", *argv[4:], "--", *reduced(base_cache)])


def test_the_setting_is_chosen_on_validation_accuracy_only():
    benchmark = load_benchmark("compare_methods")
    runs = [
        {"method": "hpt", "seed": 0, "learning_rate": rate, "validation": {"greedy": v}, "held_out": {"greedy": h}}
        for rate, v, h in (("1e-4", 0.2, 0.9), ("3e-4", 0.5, 0.1), ("1e-3", 0.4, 0.5), ("3e-3", 0.0, 0.6))
    ]
    assert benchmark.chosen_setting(runs, "hpt", tuning_seed=0, learning_rates=("1e-4", "3e-4", "1e-3")) == "3e-4"
    assert benchmark.chosen_setting(runs, "hpt", tuning_seed=0, learning_rates=("1e-4", "3e-3")) == "1e-4"
    assert benchmark.chosen_setting(runs[:2], "hpt", tuning_seed=0) is None  # not all of the budget run yet
    assert benchmark.chosen_setting(runs, "hpt", tuning_seed=1) is None
