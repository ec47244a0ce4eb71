import math

import pytest
import torch
from hpt_testing import (
    LAYOUT_MODES,
    NUM_GENERATIONS,
    base_kwargs,
    demonstration_for,
    length_parity_reward,
    make_config,
    make_dataset,
    odd_prompts_wrong,
    one_step_update,
    parameters,
    record_generation_batches,
)
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from hpt_trl import HPTTrainer
from hpt_trl.gating import DEMONSTRATION_ROW, DROPPED_ROW, RL_ROW


@pytest.mark.parametrize(
    "cost_options, exact, entropy_coef",
    [
        (dict(padding_free=False, skip_zero_advantage_rows=False), True, 0.0),
        (dict(padding_free=True), False, 0.0),  # packed, and zero-advantage rows skipped (the default here)
        (dict(padding_free=False, skip_zero_advantage_rows=False), True, 0.01),  # TRL's entropy bonus, as TRL's
    ],
)
def test_gamma_minus_one_is_grpo(tiny_model_dir, tmp_path, cost_options, exact, entropy_coef):
    """With SFT off, HPT must reproduce GRPOTrainer: exactly on TRL's rectangle, to float rounding when packed."""
    common = dict(gradient_accumulation_steps=2, loss_type="dr_grpo", scale_rewards="none", entropy_coef=entropy_coef)
    hpt_args = make_config(tmp_path / "hpt", gamma=-1, **common, **cost_options)
    grpo_args = GRPOConfig(**base_kwargs(tmp_path / "grpo"), **common)

    results = []
    for trainer_cls, args in ((HPTTrainer, hpt_args), (GRPOTrainer, grpo_args)):
        trainer = trainer_cls(tiny_model_dir, length_parity_reward, args=args, train_dataset=make_dataset())
        before = parameters(trainer.model)
        trainer.train()
        results.append((before, parameters(trainer.model)))
    (hpt_before, hpt_after), (grpo_before, grpo_after) = results
    assert any(not torch.equal(hpt_before[n], hpt_after[n]) for n in hpt_after), "training must move the weights"
    for name in grpo_after:
        if exact:
            assert torch.equal(hpt_after[name], grpo_after[name]), name
        else:
            torch.testing.assert_close(hpt_after[name], grpo_after[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "entropy", [None, "rollouts", "rollouts_and_demonstrations"], ids=["no-bonus", "bonus-on-rollouts", "bonus-on-all"]
)
def test_gamma_n_is_sft_on_demonstration_tokens(tiny_model_dir, tmp_path, entropy):
    """
    Every prompt gated: one plain-SGD step must equal a step on the demonstrations' NLL (each one's token mean, over
    the update's rows), minus the entropy bonus `coef * sum H / (rows * max_completion_length)` where it covers them.
    """
    lr, coef = 0.5, 0.3
    bonus = {} if entropy is None else dict(entropy_coef=coef, entropy_coverage=entropy)
    args = make_config(
        tmp_path,
        gamma=NUM_GENERATIONS,
        max_steps=1,
        learning_rate=lr,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: the update is exactly -lr * gradient
        max_completion_length=64,
        **bonus,
    )
    trainer = HPTTrainer(tiny_model_dir, length_parity_reward, args=args, train_dataset=make_dataset())
    batches = record_generation_batches(trainer)
    before = parameters(trainer.model)
    trainer.train()
    after = parameters(trainer.model)

    # Independently: the prompts of the step, chat-templated, + demonstration + EOS; each demonstration's token-mean
    # NLL, summed and divided by the rollout rows of the update (HPTConfig's formula), one gradient.
    pids = sorted(set(batches[0]["pids"]))
    rows = len(batches[0]["pids"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    objective = 0.0
    for pid in pids:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{pid}+{pid}="}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        demo = tokenizer(demonstration_for(pid), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + demo])
        logits = model(ids).logits[0, len(prompt) - 1 : -1]
        objective = objective + torch.nn.functional.cross_entropy(logits, ids[0, len(prompt) :]) / rows
        if entropy == "rollouts_and_demonstrations":
            logprobs = logits.log_softmax(-1)
            token_entropy = -(logprobs.exp() * logprobs).sum(-1)
            objective = objective - coef * token_entropy.sum() / (rows * args.max_completion_length)
    objective.backward()
    for name, param in model.named_parameters():
        expected = before[name] - lr * param.grad
        torch.testing.assert_close(after[name], expected, rtol=1e-4, atol=1e-6, msg=name)
    assert trainer.state.log_history[0]["hpt/sft_prompt_ratio"] == 1.0


def test_an_update_above_the_skip_threshold_changes_nothing(tiny_model_dir, tmp_path):
    """grad_norm_skip_threshold: no parameter, Adam moment or step count changes; below it the update happens."""
    results = {}
    for threshold in (1e-9, 1e9):
        args = make_config(
            tmp_path / str(threshold),
            gamma=0,
            max_steps=2,
            per_device_train_batch_size=32,
            grad_norm_skip_threshold=threshold,
        )
        trainer = HPTTrainer(tiny_model_dir, odd_prompts_wrong, args=args, train_dataset=make_dataset())
        before = parameters(trainer.model)
        trainer.train()
        after = parameters(trainer.model)
        changed = [name for name in after if not torch.equal(before[name], after[name])]
        adam_steps = [float(state["step"]) for state in trainer.optimizer.state.values() if "step" in state]
        skipped = [log["hpt/skipped_update"] for log in trainer.state.log_history if "hpt/skipped_update" in log]
        results[threshold] = (changed, adam_steps, skipped)
    changed, adam_steps, skipped = results[1e-9]
    assert not changed and not adam_steps and skipped == [1.0, 1.0]
    changed, adam_steps, skipped = results[1e9]
    assert changed and adam_steps and set(adam_steps) == {2.0} and skipped == [0.0, 0.0]


def test_the_skip_threshold_is_refused_under_deepspeed(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="cannot act under DeepSpeed.*fsdp2.yaml"):
        make_config(tmp_path, grad_norm_skip_threshold=1.25)


@pytest.mark.parametrize("conversational", [True, False])
def test_mixed_batch_gates_exactly_the_failing_prompts(tiny_model_dir, tmp_path, conversational):
    args = make_config(tmp_path, gamma=0, max_completion_length=32)
    trainer = HPTTrainer(
        tiny_model_dir, odd_prompts_wrong, args=args, train_dataset=make_dataset(conversational=conversational)
    )
    batches = record_generation_batches(trainer)
    trainer.train()

    tokenizer = trainer.processing_class
    for batch in batches:
        kinds = batch["hpt_row_kind"].tolist()
        for row, (pid, kind) in enumerate(zip(batch["pids"], kinds, strict=True)):
            if pid % 2 == 0:
                assert kind == RL_ROW
            else:
                assert kind in (DEMONSTRATION_ROW, DROPPED_ROW)
                assert batch["completion_mask"][row].sum() == 0, "a gated rollout must leave the RL loss"
        odd = {pid for pid in batch["pids"] if pid % 2}
        demo_pids = [pid for pid, kind in zip(batch["pids"], kinds) if kind == DEMONSTRATION_ROW]
        assert sorted(demo_pids) == sorted(odd), "exactly one demonstration row per gated prompt"
        for row, kind in enumerate(kinds):
            if kind == DEMONSTRATION_ROW:
                length = int(batch["demonstration_mask"][row].sum())
                ids = batch["demonstration_ids"][row, :length].tolist()
                assert ids[-1] == tokenizer.eos_token_id
                assert tokenizer.decode(ids[:-1]) == demonstration_for(batch["pids"][row])
    ratios = [log["hpt/sft_prompt_ratio"] for log in trainer.state.log_history if "hpt/sft_prompt_ratio" in log]
    accuracies = [log["hpt/group_accuracy"] for log in trainer.state.log_history if "hpt/group_accuracy" in log]
    expected = [sum(p % 2 for p in set(b["pids"])) / len(set(b["pids"])) for b in batches]
    assert ratios == pytest.approx(expected)
    assert accuracies == pytest.approx([1 - r for r in expected])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_demonstration_counts_once_with_accumulation_and_steps_per_generation(tiny_model_dir, tmp_path, temperature):
    """Shuffled over 4 micro-batches, a gated prompt's demonstration tokens still enter the loss exactly once."""
    args = make_config(
        tmp_path,
        gamma=0,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        steps_per_generation=4,
        max_steps=2,
        max_completion_length=32,
        temperature=temperature,
    )
    trainer = HPTTrainer(tiny_model_dir, odd_prompts_wrong, args=args, train_dataset=make_dataset(num_prompts=8))
    batches = record_generation_batches(trainer)
    seen = []
    if temperature == 1.0:  # the demonstrations share the RL rows' forward
        original_sequences = trainer._demonstration_sequences

        def counting(inputs, rows):
            sequences = original_sequences(inputs, rows)
            seen.append(sum(len(s.scored) for s in sequences))
            return sequences

        trainer._demonstration_sequences = counting
    else:  # their own forward at temperature 1
        original = trainer._demonstration_logps

        def counting(model, batch):
            logps = original(model, batch)
            seen.append(int(batch["demonstration_mask"].sum()))
            return logps

        trainer._demonstration_logps = counting
    trainer.train()

    assert len(batches) == 1, "4 micro-batches of one generation batch: generated once"
    gated = {pid for pid in batches[0]["pids"] if pid % 2}
    tokenizer = trainer.processing_class
    expected_tokens = sum(len(tokenizer(demonstration_for(pid))["input_ids"]) + 1 for pid in gated)
    assert len(seen) == 4
    assert sum(seen) == expected_tokens
    sft_losses = [log["hpt/sft_loss"] for log in trainer.state.log_history if "hpt/sft_loss" in log]
    assert sft_losses and all(math.isfinite(x) and x > 0 for x in sft_losses)


def test_every_micro_batch_kind_gives_a_finite_loss(tiny_model_dir, tmp_path):
    """Micro-batches with only RL rows, only demonstrations, or only dropped rows: finite loss, no NaN."""
    args = make_config(tmp_path, gamma=0, max_completion_length=24, per_device_train_batch_size=32, max_steps=1)
    trainer = HPTTrainer(tiny_model_dir, odd_prompts_wrong, args=args, train_dataset=make_dataset())
    batches = record_generation_batches(trainer)
    trainer.train()
    batch = {k: v for k, v in batches[0].items() if k != "pids"}
    assert {pid % 2 for pid in batches[0]["pids"]} == {0, 1}
    kinds = batch["hpt_row_kind"]
    size = kinds.size(0)
    from hpt_trl.gating import select_rows

    trainer.model.train()
    for kind in (RL_ROW, DEMONSTRATION_ROW, DROPPED_ROW):
        rows = (kinds == kind).nonzero().squeeze(1)
        assert rows.numel() > 0
        micro_batch = select_rows(batch, rows, size)
        loss = trainer._compute_loss(trainer.model, micro_batch)
        assert torch.isfinite(loss), kind
        loss.backward()  # still connected to the graph, so DDP/ZeRO see every parameter
        if kind == DROPPED_ROW:
            assert loss.item() == 0.0
        trainer.model.zero_grad()
    logged = [v for log in trainer.state.log_history for v in log.values() if isinstance(v, float)]
    assert logged and all(math.isfinite(v) for v in logged)


LAYOUTS = [(16, 2), (8, 4)]  # (rows per micro-batch, accumulation steps) on one process, against 32 x 1


@pytest.mark.parametrize("mode", list(LAYOUT_MODES))
def test_the_update_does_not_depend_on_the_batch_split(tiny_model_dir, tmp_path, mode):
    """One generation batch, SFT and RL rows mixed, entropy bonus on: 32 x 1, 16 x 2 and 8 x 4 give one update."""
    whole = one_step_update(tiny_model_dir, tmp_path / "whole", mode, 32, 1)
    scale = max(delta.abs().max() for delta in whole.values())
    assert scale > 0
    for rows, accumulation in LAYOUTS:
        split = one_step_update(tiny_model_dir, tmp_path / f"{rows}x{accumulation}", mode, rows, accumulation)
        for name, delta in whole.items():
            torch.testing.assert_close(
                split[name], delta, rtol=0, atol=2e-6 * scale, msg=f"{mode} {rows}x{accumulation} {name}"
            )
