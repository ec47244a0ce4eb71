"""Gating (`hpt_trl.gating`): the gate strategies' coefficients and the adaptive gamma, against values computed here."""

import json

import pytest
import torch
from hpt_testing import (
    SOFT_DEMO,
    SOFT_RL,
    correct_by_pid,
    make_config,
    make_dataset,
)

from hpt_trl import HPTTrainer
from hpt_trl.gating import (
    DEMONSTRATION_ROW,
    DROPPED_ROW,
    RL_ROW,
    AdaptiveGamma,
    assign_rows,
    decide_gate,
    gate_coefficients,
)


def test_gate_coefficients_by_strategy():
    counts = torch.tensor([0, 1, 2, 3, 4, 7])
    rl, demo = gate_coefficients(counts, "switch", gamma=1)
    assert rl.tolist() == [0, 0, 1, 1, 1, 1] and demo.tolist() == [1, 1, 0, 0, 0, 0]
    rl, demo = gate_coefficients(counts, "soft", gamma=0)  # the authors' table; the last entry for P >= 4
    assert rl.tolist() == [0.0, 0.125, 0.25, 0.5, 1.0, 1.0]
    assert demo.tolist() == [1.0, 0.5, 0.25, 0.125, 0.0, 0.0]
    rl, demo = gate_coefficients(counts, "soft", gamma=0, soft_rl=(0.2, 0.7), soft_demonstration=(0.9,))
    assert rl.tolist() == pytest.approx([0.2, 0.7, 0.7, 0.7, 0.7, 0.7]) and demo.tolist() == pytest.approx([0.9] * 6)
    rl, demo = gate_coefficients(counts, "always", gamma=0)
    assert rl.tolist() == demo.tolist() == [1.0] * 6


def test_adaptive_gamma_follows_the_running_accuracy():
    rule = AdaptiveGamma(num_generations=8, target_accuracy=0.25, decay=0.5)
    assert rule.update(0.0) == 2  # round(8 * 0.25): the paper's gamma for a weak model
    assert rule.accuracy == 0.0
    assert rule.update(0.2) == 1  # a = 0.1: round(8 * 0.15) = round(1.2)
    assert rule.update(0.5) == 0  # a = 0.3 >= target
    assert rule.update(0.0) == 1  # a = 0.15: round(8 * 0.1) = round(0.8)
    assert rule.accuracy == pytest.approx(0.15)
    restored = AdaptiveGamma(8, 0.25, 0.5)
    restored.load_state_dict(json.loads(json.dumps(rule.state_dict())))
    assert (restored.accuracy, restored.num_batches, restored.gamma) == (rule.accuracy, 4, rule.gamma)


def test_adaptive_gate_state_survives_resume(tiny_model_dir, tmp_path):
    args = make_config(
        tmp_path, gate_strategy="adaptive", save_strategy="steps", save_steps=2, max_completion_length=16
    )
    trainer = HPTTrainer(tiny_model_dir, correct_by_pid, args=args, train_dataset=make_dataset())
    trainer.train()
    saved = json.loads((tmp_path / "checkpoint-2" / "hpt_gate_state.json").read_text())
    assert saved == trainer.adaptive_gamma.state_dict() and saved["num_batches"] == 2

    args = make_config(tmp_path, gate_strategy="adaptive", max_steps=3, max_completion_length=16)
    resumed = HPTTrainer(tiny_model_dir, correct_by_pid, args=args, train_dataset=make_dataset())
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.adaptive_gamma.num_batches == 3


def test_decide_gate_counts_p_per_prompt_and_weighs_its_terms():
    # 3 prompts x 4 rollouts: P = 0, 2, 4 (NaN, a reward function's None, counts as not correct).
    rewards = torch.tensor([0.0, float("nan"), 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    tables = (tuple(SOFT_RL), tuple(SOFT_DEMO))
    gate = decide_gate(rewards, 4, 1.0, "switch", 2, tables)
    assert gate.correct_counts.tolist() == [0, 2, 4] and gate.gamma == 2
    assert gate.rl_coef.tolist() == [0, 0, 1] and gate.demonstration_coef.tolist() == [1, 1, 0]
    assert gate.gate_rewards is rewards
    # Without demonstrations (gamma=-1) every prompt stays in RL, whatever P.
    grpo = decide_gate(rewards, 4, 1.0, "switch", -1, tables, uses_demonstrations=False)
    assert grpo.rl_coef.tolist() == [1, 1, 1] and grpo.demonstration_coef.tolist() == [0, 0, 0]
    # The adaptive gamma is updated with this batch's accuracy (0.5) before the batch is gated: round(4 * 0.3) = 1.
    adaptive = AdaptiveGamma(4, target_accuracy=0.8, decay=0.9)
    gate = decide_gate(rewards, 4, 1.0, "adaptive", 0, tables, adaptive)
    assert adaptive.num_batches == 1 and gate.gamma == 1
    assert gate.demonstration_coef.tolist() == [1, 0, 0]


def test_assign_rows_puts_each_demonstration_on_its_prompts_first_row_once():
    # 2 prompts x 4 rollouts over 2 processes of 4 rows: prompt 0 gated, prompt 1 soft (both terms).
    rl_coef, demonstration_coef = torch.tensor([0.0, 0.5]), torch.tensor([1.0, 0.25])
    kinds, weights = [], []
    for process in range(2):
        k, rl, demo = assign_rows(rl_coef, demonstration_coef, 4, first_global_row=4 * process, num_local_rows=4)
        kinds += k.tolist()
        weights += demo.tolist()
        assert rl.tolist() == [rl_coef[process].item()] * 4
    assert kinds == [DEMONSTRATION_ROW, DROPPED_ROW, DROPPED_ROW, DROPPED_ROW, RL_ROW, RL_ROW, RL_ROW, RL_ROW]
    assert weights == [1.0, 0, 0, 0, 0.25, 0, 0, 0]
