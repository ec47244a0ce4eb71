"""Issue 5: the gate strategies and demonstration losses against formulas computed here, independently."""

import json
import math
import re

import pytest
import torch
from hpt_testing import (
    NUM_GENERATIONS,
    demonstration_for,
    make_config,
    make_dataset,
    parameters,
    record_generation_batches,
)

from hpt_trl import HPTTrainer
from hpt_trl.demonstration_losses import off_policy_token_losses
from hpt_trl.gating import DEMONSTRATION_ROW, RL_ROW, AdaptiveGamma, gate_coefficients


SOFT_RL = [0.0, 0.125, 0.25, 0.5, 1.0]
SOFT_DEMO = [1.0, 0.5, 0.25, 0.125, 0.0]


def position_rewards(pid):
    """Prompt `pid` gets exactly P = pid % 5 correct rollouts: the first P rows of its group (one process, in order)."""
    rewards, seen = [], {}
    for p in pid:
        position = seen.get(p, 0)
        seen[p] = position + 1
        rewards.append(float(position < p % (NUM_GENERATIONS + 1)))
    return rewards


def correct_by_pid(completions, pid, **kwargs):
    """
    A verifier for the tiny model: a completion with a boxed answer (the demonstrations) is right when the answer is
    `2 * pid`; the rollouts, which never write one, are right by position (`position_rewards`).
    """
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    boxed = [re.search(r"\\boxed\{([^}]*)\}", text) for text in texts]
    by_position = iter(position_rewards([p for p, b in zip(pid, boxed) if b is None]))
    return [float(b.group(1) == str(2 * p)) if b else next(by_position) for p, b in zip(pid, boxed)]


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


def test_luffy_weight_and_its_gradient():
    logp = torch.tensor([-0.1, -1.0, -3.0, -8.0], requires_grad=True)
    advantage = torch.tensor(0.75)
    (losses,) = off_policy_token_losses([logp], advantage.unsqueeze(0))
    p = logp.detach().exp()
    torch.testing.assert_close(losses, -advantage * p / (p + 0.1))
    losses.sum().backward()
    # d/dlogp of -A p/(p+0.1) = -A * 0.1 p / (p+0.1)^2: tokens the policy finds unlikely are not blown up (p -> 0).
    torch.testing.assert_close(logp.grad, -advantage * 0.1 * p / (p + 0.1) ** 2)
    # Unlike SFT's weight 1 on every token's grad log p, this weight is at most A/4 (at p = 0.1) and vanishes as p -> 0.
    assert (logp.grad.abs() <= 0.25 * advantage + 1e-7).all() and logp.grad[-1].abs() < 0.01


def _plain_logps(model, prompt, completion):
    """Log-probs and entropies (temperature 1) of `completion` after `prompt`, from a plain forward."""
    full = torch.cat([prompt, completion]).unsqueeze(0)
    logits = model(full).logits[0, len(prompt) - 1 : -1].float()
    logprobs = logits.log_softmax(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logprobs.gather(1, completion.unsqueeze(1)).squeeze(1), entropy


def _expected_objective(trainer, batch, mode):
    """The mode's objective built from the batch's raw tokens and the known rewards, not from the trainer's terms."""
    args = trainer.args
    model = trainer.model
    rows, width = batch["completion_ids"].size(0), args.max_completion_length
    pids = batch["pids"]
    n = NUM_GENERATIONS
    rewards = torch.tensor(position_rewards(pids)).view(-1, n)
    counts = rewards.sum(1).long()  # P: the n sampled rollouts, the one a demonstration replaces included
    if mode == "soft":
        rl_coef = torch.tensor([SOFT_RL[min(int(c), 4)] for c in counts])
        demo_coef = torch.tensor([SOFT_DEMO[min(int(c), 4)] for c in counts])
    else:
        rl_coef, demo_coef = torch.ones(len(counts)), torch.ones(len(counts))
    if mode == "soft":
        advantages = rewards - rewards.mean(1, keepdim=True)
        demo_advantages = None
    else:  # LUFFY/SRFT, 7 + 1: the demonstration (the verifier scores it 1) replaces the group's first rollout
        rewards[:, 0] = 1.0
        group_mean = rewards.mean(1, keepdim=True)
        advantages = rewards - group_mean
        demo_advantages = advantages[:, 0]

    objective = torch.zeros(())
    sft_sum = torch.zeros(())
    for row in range(rows):
        group, position = divmod(row, n)
        prompt = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()]
        completion = batch["completion_ids"][row][batch["completion_mask"][row].bool()]
        replaced = mode != "soft" and position == 0  # its place is the demonstration's
        if rl_coef[group] > 0 and len(completion) and not replaced:
            logps, entropy = _plain_logps(model, prompt, completion)
            if mode == "srft":
                correct = rewards[group, position] == 1
                weight = 0.1 * entropy.detach().mean().exp() if correct else torch.tensor(-1.0)
            else:
                weight = rl_coef[group] * advantages[group, position]
            objective = objective - weight * logps.sum() / (rows * width)
        if position == 0 and demo_coef[group] > 0:
            demo = batch["demonstration_ids"][row][batch["demonstration_mask"][row].bool()]
            logps, entropy = _plain_logps(model, prompt, demo)
            if mode in ("soft", "srft"):
                weight = demo_coef[group] * (0.5 * (-entropy.detach().mean()).exp() if mode == "srft" else 1.0)
                sft_sum = sft_sum - weight * logps.mean()
            if mode in ("off_policy", "srft"):
                p = logps.exp()
                objective = objective + (-demo_advantages[group] * p / (p + 0.1)).sum() / (rows * width)
    # Each demonstration's token-mean NLL, divided by the update's rollout rows as the RL term (HPTConfig's formula).
    return objective + args.sft_loss_coef * sft_sum / rows


@pytest.mark.parametrize(
    "mode, options",
    [
        ("soft", dict(gate_strategy="soft")),
        ("off_policy", dict(gate_strategy="always", demonstration_loss="off_policy")),
        ("srft", dict(gate_strategy="always", demonstration_loss="srft")),
    ],
)
def test_each_mode_has_the_gradient_of_its_formula(tiny_model_dir, tmp_path, mode, options):
    args = make_config(
        tmp_path, max_steps=1, per_device_train_batch_size=32, max_completion_length=40, sft_loss_coef=0.7, **options
    )
    trainer = HPTTrainer(tiny_model_dir, correct_by_pid, args=args, train_dataset=make_dataset(num_prompts=8))
    batches = record_generation_batches(trainer)
    trainer.train()
    batch = batches[0]
    counts = torch.tensor(position_rewards(batch["pids"])).view(-1, NUM_GENERATIONS).sum(1)
    assert sorted(set(counts.tolist())) == [0, 1, 2, 3, 4], "every P of the table must occur"
    if mode == "soft":
        first_rows = batch["demonstration_weight"].view(-1, NUM_GENERATIONS)[:, 0]
        assert first_rows.tolist() == [SOFT_DEMO[int(c)] for c in counts]

    model = trainer.model
    model.train()
    trainer._step = 0  # a fresh accumulation window of one micro-batch
    inputs = {k: v for k, v in batch.items() if k != "pids"}
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(trainer._compute_loss(model, inputs), params, allow_unused=True)
    want = torch.autograd.grad(_expected_objective(trainer, batch, mode), params, allow_unused=True)
    compared = 0
    for g, w in zip(got, want):
        if w is None:
            continue
        torch.testing.assert_close(g, w, rtol=2e-3, atol=2e-6)
        compared += 1
    assert compared == len(params)


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


@pytest.mark.parametrize(
    "options",
    [
        dict(gate_strategy="switch", gamma=1),
        dict(gate_strategy="soft"),
        dict(gate_strategy="adaptive"),
        dict(gate_strategy="always"),
        dict(gate_strategy="always", demonstration_loss="off_policy"),
        dict(gate_strategy="always", demonstration_loss="srft"),
        dict(gate_strategy="switch", gamma=1, demonstration_loss="off_policy", temperature=0.8),
    ],
    ids=["switch", "soft", "adaptive", "always-sft", "luffy", "srft", "switch-off-policy-T0.8"],
)
def test_each_mode_trains(tiny_model_dir, tmp_path, options):
    args = make_config(tmp_path, max_completion_length=24, gradient_accumulation_steps=2, **options)
    trainer = HPTTrainer(tiny_model_dir, correct_by_pid, args=args, train_dataset=make_dataset())
    before = parameters(trainer.model)
    trainer.train()
    after = parameters(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in after)
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) for log in logs)
    if options.get("demonstration_loss") in ("off_policy", "srft"):
        assert all(math.isfinite(log["hpt/off_policy_loss"]) for log in logs)
    if options["gate_strategy"] == "adaptive":
        assert all("hpt/gamma" in log for log in logs)


@pytest.mark.parametrize(
    "reduced",
    [
        dict(gate_strategy="soft", soft_rl_coefs=[0.0, 1.0], soft_demonstration_coefs=[1.0, 0.0]),
        dict(gate_strategy="adaptive", adaptive_target_accuracy=0.01),  # gamma = round(4 * (0.01 - a)) = 0
    ],
    ids=["soft-0/1-table", "adaptive-at-target"],
)
def test_modes_that_reduce_to_the_switch_give_identical_updates(tiny_model_dir, tmp_path, reduced):
    results = []
    for name, options in (("switch", dict(gate_strategy="switch", gamma=0)), ("reduced", reduced)):
        args = make_config(tmp_path / name, max_completion_length=24, **options)
        trainer = HPTTrainer(tiny_model_dir, correct_by_pid, args=args, train_dataset=make_dataset())
        trainer.train()
        results.append(parameters(trainer.model))
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


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


def test_toolkit_options_are_validated(tmp_path):
    with pytest.raises(ValueError, match="gate_strategy must be one of"):
        make_config(tmp_path, gate_strategy="hard")
    with pytest.raises(ValueError, match="soft_rl_coefs must be a non-empty list"):
        make_config(tmp_path, gate_strategy="soft", soft_rl_coefs=[0.5, -1.0])
    with pytest.raises(ValueError, match="loss_type='dapo'"):
        make_config(tmp_path, demonstration_loss="off_policy", loss_type="dapo")
    with pytest.raises(ValueError, match="temperature=1.0"):
        make_config(tmp_path, demonstration_loss="srft", temperature=0.7)
    with pytest.raises(ValueError, match="gamma=-1"):
        make_config(tmp_path, gamma=-1, gate_strategy="soft")
    parts = make_config(tmp_path, gate_strategy="always", demonstration_loss="off_policy").upge_parts
    assert parts["demonstrations/reference_denominator"] == "1, shaped p/(p+0.1)"
    assert "demonstrations/advantage" not in make_config(tmp_path, gamma=-1).upge_parts
