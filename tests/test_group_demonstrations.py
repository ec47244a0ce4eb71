"""LUFFY/SRFT groups (`hpt_trl.group_demonstrations`): 7 rollouts + the verified demonstration, scored once per group."""

import pytest
import torch
from hpt_testing import (
    NUM_GENERATIONS,
    correct_by_pid,
    demonstration_for,
    make_config,
    make_dataset,
    position_rewards,
    record_generation_batches,
)

from hpt_trl import HPTTrainer
from hpt_trl.gating import DEMONSTRATION_ROW, RL_ROW


def _one_step_with_demonstrations(tiny_model_dir, tmp_path, dataset, **options):
    """Train one step on all 8 prompts at once; return the gated batch and the rewards TRL's advantages came from."""
    args = make_config(tmp_path, max_steps=1, per_device_train_batch_size=32, max_completion_length=32, **options)
    trainer = HPTTrainer(tiny_model_dir, correct_by_pid, args=args, train_dataset=dataset)
    batches = record_generation_batches(trainer)
    rewards = []
    score = trainer._calculate_rewards
    trainer._calculate_rewards = lambda *a: rewards.append(score(*a)) or rewards[-1]
    trainer.train()
    (batch,) = batches
    return batch, rewards[0][:, 0].view(-1, NUM_GENERATIONS), trainer


def test_luffy_group_is_n_minus_1_rollouts_and_the_verified_demonstration(tiny_model_dir, tmp_path):
    wrong = 3  # this prompt's demonstration has a wrong answer: the verifier rejects it
    dataset = make_dataset(num_prompts=8).map(
        lambda x: {"demonstration": "3+3=7. \\boxed{7}" if x["pid"] == wrong else x["demonstration"]}
    )
    batch, rewards, _ = _one_step_with_demonstrations(
        tiny_model_dir, tmp_path, dataset, gate_strategy="always", demonstration_loss="off_policy"
    )
    n = NUM_GENERATIONS
    pids = batch["pids"][::n]
    sampled = torch.tensor(position_rewards(batch["pids"])).view(-1, n)
    kinds = batch["hpt_row_kind"].view(-1, n)
    loss_rows = (batch["completion_mask"].sum(1) > 0).view(-1, n)
    advantages = batch["advantages"].view(-1, n)
    for group, pid in enumerate(pids):
        # The demonstration's reward is the verifier's; the other n - 1 rows keep their rollouts' rewards.
        demo_reward = float(pid != wrong)
        assert rewards[group, 0] == demo_reward and torch.equal(rewards[group, 1:], sampled[group, 1:])
        group_rewards = torch.cat([torch.tensor([demo_reward]), sampled[group, 1:]])
        expected = group_rewards - group_rewards.mean()
        assert batch["demonstration_advantage"][group * n].item() == pytest.approx(expected[0].item())
        torch.testing.assert_close(advantages[group, 1:], expected[1:])
        # The replaced rollout left the RL term: the group's RL term has n - 1 rows.
        assert kinds[group].tolist() == [DEMONSTRATION_ROW] + [RL_ROW] * (n - 1)
        assert loss_rows[group].tolist() == [False] + [True] * (n - 1) and advantages[group, 0] == 0
        assert batch["demonstration_weight"][group * n] == 1
    # A rejected demonstration in a group with correct rollouts gets reward 0 and a negative advantage.
    group = pids.index(wrong)  # P = 3: rollouts 1 and 2 of the 3 kept are correct
    assert rewards[group, 0] == 0 and batch["demonstration_advantage"][group * n].item() == pytest.approx(-0.5)


def test_off_policy_switch_replaces_a_rollout_only_in_gated_groups(tiny_model_dir, tmp_path):
    batch, rewards, trainer = _one_step_with_demonstrations(
        tiny_model_dir, tmp_path, make_dataset(num_prompts=8), gamma=1, demonstration_loss="off_policy"
    )
    n = NUM_GENERATIONS
    sampled = torch.tensor(position_rewards(batch["pids"])).view(-1, n)
    advantages = batch["advantages"].view(-1, n)
    for group in range(sampled.size(0)):
        if sampled[group].sum() <= 1:  # gated: the demonstration (reward 1) replaces rollout 0, the rollouts leave RL
            group_rewards = torch.cat([torch.ones(1), sampled[group, 1:]])
            assert torch.equal(rewards[group], group_rewards)
            demo_advantage = batch["demonstration_advantage"][group * n].item()
            assert demo_advantage == pytest.approx(1 - group_rewards.mean().item())
            assert (advantages[group] == 0).all()
        else:  # no demonstration: the group keeps its own n rollouts, their rewards and TRL's advantages
            assert torch.equal(rewards[group], sampled[group])
            torch.testing.assert_close(advantages[group], sampled[group] - sampled[group].mean())
            assert batch["demonstration_weight"][group * n] == 0
    assert trainer.state.log_history[0]["hpt/group_accuracy"] == pytest.approx(sampled.mean().item())


def test_demonstrations_are_scored_once_per_group_as_trained(tiny_model_dir, tmp_path):
    calls = []

    def recording_reward(completions, **kwargs):
        calls.append([c[0]["content"] for c in completions])
        return [0.0] * len(completions)

    width = 6  # shorter than every demonstration: each is cut to its first 6 tokens (one byte each), EOS dropped
    args = make_config(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=32,
        max_completion_length=width,
        gate_strategy="always",
        demonstration_loss="off_policy",
    )
    trainer = HPTTrainer(tiny_model_dir, recording_reward, args=args, train_dataset=make_dataset(num_prompts=8))
    trainer.train()
    rollouts, demonstrations = calls  # one call for the 32 rollouts, one for the 8 groups' demonstrations
    assert len(rollouts) == 32
    assert sorted(demonstrations) == sorted(demonstration_for(pid)[:width] for pid in range(8))
