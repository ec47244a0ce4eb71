"""benchmarks/step_cost.py, run end to end in CI size: each configuration in its own subprocess, as from the shell."""

import json
import os

from hpt_testing import load_benchmark


os.environ.setdefault("OMP_NUM_THREADS", "1")

NUM_PROMPTS, NUM_GENERATIONS, MAX_COMPLETION_LENGTH = 4, 4, 16


def test_step_cost_gates_as_asked_and_counts_only_the_rows_in_the_loss(tmp_path, capsys):
    argv = ["--steps", "2", "--shares", "0", "100", "--hidden_size", "32", "--num_prompts", str(NUM_PROMPTS)]
    argv += ["--num_generations", str(NUM_GENERATIONS), "--max_completion_length", str(MAX_COMPLETION_LENGTH)]
    argv += ["--hpt_gammas", "-1", "0", "--json", str(tmp_path / "cost.json")]
    results = load_benchmark("step_cost").main(argv)
    table = capsys.readouterr().out

    for share in (0, 100):
        for trainer in ("GRPO", "HPT gamma=-1", "HPT"):
            assert sum(line.startswith(f"| {share}% | {trainer} |") for line in table.splitlines()) == 1, table
            row = results[share][trainer]
            assert row["measured_steps"] == 1  # the warm-up step is dropped
            assert row["gen"] > 0 and row["train"] > 0 and row["step"] >= row["gen"] + row["train"]
            assert row["tok_fwd"] >= row["tok_needed"]
            assert row["act_peak_mib"] > 0
        assert f"| {share}% | " in table.split("HPT/GRPO", 1)[1]  # the ratio table
        for gamma in (-1, 0):
            assert f"| {share}% | {gamma} | " in table.split("HPT/GRPO", 1)[1]

    # The controlled reward gates exactly what it was asked to, as HPT's own gate logs it.
    assert results[0]["HPT"]["sft_prompt_ratio"] == 0.0
    assert results[100]["HPT"]["sft_prompt_ratio"] == 1.0
    assert results[0]["GRPO"]["sft_prompt_ratio"] is None
    # At gamma=-1 HPTTrainer is GRPO: it gates nothing, even where every rollout is wrong.
    assert results[0]["HPT gamma=-1"]["sft_prompt_ratio"] == results[100]["HPT gamma=-1"]["sft_prompt_ratio"] == 0.0

    # Nothing gated: every group has a correct rollout and spread, so both trainers have RL rows carrying loss.
    for trainer in ("GRPO", "HPT gamma=-1", "HPT"):
        assert results[0][trainer]["loss_tok"] > NUM_PROMPTS * MAX_COMPLETION_LENGTH

    # All gated: every reward is 0, so no GRPO row has an advantage, and HPT's loss is one demonstration per prompt.
    grpo, hpt = results[100]["GRPO"], results[100]["HPT"]
    assert grpo["tok_needed"] == 0 and grpo["loss_tok"] == 0
    assert results[100]["HPT gamma=-1"]["tok_needed"] == 0 and results[100]["HPT gamma=-1"]["loss_tok"] == 0
    assert 0 < hpt["loss_tok"] <= NUM_PROMPTS * MAX_COMPLETION_LENGTH
    assert hpt["loss_tok"] < hpt["tok_needed"] < grpo["tok_fwd"] / 2  # prompt + demonstration of 4 rows out of 16

    saved = json.loads((tmp_path / "cost.json").read_text())
    assert {(run["share"], run["trainer"]) for run in saved["runs"]} == {(s, t) for s in (0, 100) for t in results[s]}
    assert saved["results"]["100"]["HPT"]["sft_prompt_ratio"] == 1.0
