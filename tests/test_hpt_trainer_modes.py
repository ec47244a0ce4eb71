"""`HPTTrainer`'s modes (gate strategies x demonstration losses): each update is the gradient of its formula, computed here independently."""

import math

import pytest
import torch
from hpt_testing import (
    NUM_GENERATIONS,
    SOFT_DEMO,
    SOFT_RL,
    correct_by_pid,
    make_config,
    make_dataset,
    parameters,
    position_rewards,
    record_generation_batches,
)

from hpt_trl import HPTTrainer


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
