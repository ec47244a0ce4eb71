"""GRPOTrainer features that must keep working under HPT: LoRA, a reference model, vLLM's extra tensors,
rollout reuse (num_iterations), other temperatures, the authors' dataset schema and the model card."""

import pytest
import torch
from hpt_testing import (
    NUM_GENERATIONS,
    length_parity_reward,
    make_config,
    make_dataset,
    odd_prompts_wrong,
    parameters,
    record_generation_batches,
)
from transformers import AutoModelForCausalLM
from trl import GRPOTrainer

from hpt_trl import HPTTrainer, hpt_trainer
from hpt_trl.forward_planner import ForwardRequest
from hpt_trl.gating import DEMONSTRATION_ROW, RL_ROW, select_rows


def mixed_reward(completions, pid, **kwargs):
    """Odd prompts all wrong (gated); even prompts keep a reward spread, so the RL term is non-zero."""
    parity = length_parity_reward(completions)
    return [0.0 if p % 2 else r for p, r in zip(pid, parity, strict=True)]


def train_and_check_both_terms(trainer):
    batches = record_generation_batches(trainer)
    before = parameters(trainer.model)
    trainer.train()
    after = parameters(trainer.model)
    changed = [name for name in after if not torch.equal(before[name], after[name])]
    logs = {key for log in trainer.state.log_history for key in log}
    assert {"hpt/sft_loss", "hpt/rl_loss"} <= logs
    return batches, changed


def test_lora_trains_only_the_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig

    args = make_config(tmp_path, gamma=0, max_completion_length=24)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = HPTTrainer(
        tiny_model_dir, mixed_reward, args=args, train_dataset=make_dataset(), peft_config=peft_config
    )
    _, changed = train_and_check_both_terms(trainer)
    assert changed and all("lora" in name for name in changed)


def test_reference_model_and_kl(tiny_model_dir, tmp_path):
    args = make_config(tmp_path, gamma=0, beta=0.1, max_completion_length=24, per_device_train_batch_size=16)
    trainer = HPTTrainer(tiny_model_dir, mixed_reward, args=args, train_dataset=make_dataset())
    assert trainer.ref_model is not None
    batches, changed = train_and_check_both_terms(trainer)
    assert changed
    assert any("kl" in log for log in trainer.state.log_history)
    for batch in batches:
        left = batch["hpt_row_kind"] != RL_ROW
        assert torch.all(batch["ref_per_token_logps"][left] == 0), "gated rows carry no reference log-probs"


def test_num_iterations_reuses_demonstrations_with_old_logps(tiny_model_dir, tmp_path):
    args = make_config(
        tmp_path, gamma=0, num_iterations=2, max_steps=4, max_completion_length=24, per_device_train_batch_size=16
    )
    trainer = HPTTrainer(tiny_model_dir, mixed_reward, args=args, train_dataset=make_dataset())
    batches, changed = train_and_check_both_terms(trainer)
    assert changed
    assert len(batches) == 2, "each generation batch is used for two optimizer steps"
    for batch in batches:
        assert batch["old_per_token_logps"] is not None
        left = batch["hpt_row_kind"] != RL_ROW
        assert torch.all(batch["old_per_token_logps"][left] == 0)


def test_vllm_fields_of_gated_rows_are_neutralised(tiny_model_dir, tmp_path, monkeypatch):
    """A generation batch carrying what vLLM mode adds: whatever the rows that left RL held, the loss is the same."""
    args = make_config(tmp_path, gamma=0, beta=0.1, max_completion_length=16, per_device_train_batch_size=16)
    trainer = HPTTrainer(tiny_model_dir, mixed_reward, args=args, train_dataset=make_dataset())
    swaps = []
    swap = hpt_trainer.add_demonstration_rows

    def recording(output, *args, **kwargs):
        swaps.append(({k: v.clone() if torch.is_tensor(v) else v for k, v in output.items()}, args, kwargs))
        return swap(output, *args, **kwargs)

    monkeypatch.setattr(hpt_trainer, "add_demonstration_rows", recording)
    trainer.train()
    trainer.model.train()
    # vLLM mode adds sampling log-probs, old log-probs and the importance-sampling ratio; turn its correction on.
    trainer.use_vllm = True
    trainer.vllm_importance_sampling_correction = True
    trainer.vllm_importance_sampling_mode = "token_truncate"
    raw, swap_args, swap_kwargs = swaps[-1]
    kinds = swap_args[0]
    assert (kinds == DEMONSTRATION_ROW).any() and (kinds == RL_ROW).any()
    assert raw["advantages"][kinds == RL_ROW].abs().sum() > 0
    size, width = raw["completion_ids"].shape
    raw["sampling_per_token_logps"] = torch.full((size, width), -1.0)
    raw["old_per_token_logps"] = raw["ref_per_token_logps"].clone()
    raw["importance_sampling_ratio"] = torch.full((size, width), 1.5)

    def loss_after_swap(output):
        output = dict(output)
        swap(output, *swap_args, **swap_kwargs)
        return trainer._compute_loss(trainer.model, output), output

    reference, _ = loss_after_swap(raw)
    poisoned = dict(raw)
    left = (kinds != RL_ROW).unsqueeze(1)
    for key, value in (
        ("sampling_per_token_logps", float("nan")),
        ("importance_sampling_ratio", float("inf")),
        ("old_per_token_logps", float("-inf")),
        ("ref_per_token_logps", float("nan")),
    ):
        poisoned[key] = raw[key].masked_fill(left, value)
    poisoned["advantages"] = raw["advantages"].masked_fill(kinds != RL_ROW, float("nan"))
    poisoned_loss, swapped = loss_after_swap(poisoned)
    assert torch.isfinite(poisoned_loss)
    torch.testing.assert_close(poisoned_loss, reference)
    assert torch.all(swapped["importance_sampling_ratio"][kinds != RL_ROW] == 1.0)
    for key in ("sampling_per_token_logps", "old_per_token_logps", "ref_per_token_logps", "completion_mask"):
        assert torch.all(swapped[key][kinds != RL_ROW] == 0), key

    # And the RL rows do see the vLLM correction: raising the ratio of the positive-advantage rows changes the loss.
    boosted = dict(raw)
    positive = (raw["advantages"] > 0).unsqueeze(1)
    boosted["importance_sampling_ratio"] = torch.where(positive, 3.0, raw["importance_sampling_ratio"])
    assert not torch.allclose(loss_after_swap(boosted)[0], reference)


def training_path_demonstration_nll(trainer, demo):
    """The demonstrations' NLL along the path training takes: the RL rows' forward at temperature 1, else its own."""
    if trainer.temperature == 1.0:
        request = ForwardRequest(
            rows=[], extra=trainer._demonstration_sequences(demo, torch.arange(demo["prompt_ids"].size(0)))
        )
        input_ids = torch.cat([demo["prompt_ids"], demo["completion_ids"]], dim=1)
        attention = torch.cat([demo["prompt_mask"], demo["completion_mask"]], dim=1)
        with trainer.planned_forward(request):
            trainer._get_per_token_logps_and_entropies(
                trainer.model, input_ids, attention, demo["completion_ids"].size(1)
            )
        logps = request.extra_logps
    else:
        logps = trainer._demonstration_logps(trainer.model, demo)
    return -sum(lp.sum() for lp in logps), sum(len(lp) for lp in logps)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_demonstration_log_probs_are_the_models_own_at_temperature_one(tiny_model_dir, tmp_path, temperature):
    args = make_config(
        tmp_path,
        gamma=0,
        max_steps=1,
        temperature=temperature,
        max_completion_length=32,
        per_device_train_batch_size=32,
    )
    trainer = HPTTrainer(tiny_model_dir, odd_prompts_wrong, args=args, train_dataset=make_dataset())
    batches = record_generation_batches(trainer)
    trainer.train()
    batch = {k: v for k, v in batches[0].items() if k != "pids"}
    kinds = batch["hpt_row_kind"]
    demo = select_rows(batch, (kinds == DEMONSTRATION_ROW).nonzero().squeeze(1), kinds.size(0))
    trainer.model.eval()
    with torch.no_grad():
        nll, num_tokens = training_path_demonstration_nll(trainer, demo)
        # Independently: the plain forward of the same weights, log-softmax at temperature 1, per row.
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        model.load_state_dict(trainer.model.state_dict())
        expected_nll, expected_tokens = 0.0, 0
        for prompt, prompt_mask, ids, mask in zip(
            demo["prompt_ids"], demo["prompt_mask"], demo["demonstration_ids"], demo["demonstration_mask"], strict=True
        ):
            prompt, ids = prompt[prompt_mask.bool()], ids[mask.bool()]
            full = torch.cat([prompt, ids]).unsqueeze(0)
            logps = model(full).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
            expected_nll -= logps.gather(1, ids.unsqueeze(1)).sum()
            expected_tokens += len(ids)
    assert int(num_tokens) == expected_tokens
    torch.testing.assert_close(nll, torch.as_tensor(expected_nll), rtol=1e-5, atol=1e-5)
    if temperature == 1.0:
        # ...which is also exactly TRL's own log-prob path, the one the RL term uses.
        input_ids = torch.cat([demo["prompt_ids"], demo["demonstration_ids"]], dim=1)
        attention = torch.cat([demo["prompt_mask"], demo["demonstration_mask"]], dim=1)
        width = demo["demonstration_ids"].size(1)
        with torch.no_grad():
            trl_logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
                trainer, trainer.model, input_ids, attention, width
            )
        torch.testing.assert_close(nll, -(trl_logps * demo["demonstration_mask"]).sum())


def test_authors_target_column_and_remove_unused_columns(tiny_model_dir, tmp_path):
    """The authors' dataset keeps the demonstration as `target`: a list holding one assistant message."""
    dataset = make_dataset().map(lambda x: {"target": [{"role": "assistant", "content": x["demonstration"]}]})
    dataset = dataset.remove_columns("demonstration")
    args = make_config(
        tmp_path, gamma=0, demonstration_column="target", remove_unused_columns=True, max_completion_length=32
    )

    def all_wrong(completions, **kwargs):  # `pid` is pruned with the unused columns; the demonstration is not
        return [0.0] * len(completions)

    trainer = HPTTrainer(tiny_model_dir, all_wrong, args=args, train_dataset=dataset)
    trainer.train()
    assert trainer.state.log_history[0]["hpt/sft_prompt_ratio"] == 1.0
    assert trainer.state.log_history[0]["hpt/sft_loss"] > 0


@pytest.fixture(scope="module")
def tiny_moe_dir(tmp_path_factory):
    """A tiny Qwen3-MoE (4 experts, 2 active) that returns its load-balancing loss, with the tiny tokenizer."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from hpt_trl.builtin_task.tiny_model import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    config = Qwen3MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=32,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
        output_router_logits=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    folder = tmp_path_factory.mktemp("tiny-moe")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("model", ["dense", "moe"])
def test_fully_gated_steps_log_every_key_grpo_logs(tiny_model_dir, tiny_moe_dir, tmp_path, model):
    """
    Every key TRL logs for a config is in every step's log, on steps where every prompt is gated too: the aux loss
    (it acts on the demonstrations), policy_loss, entropy_coef (a setting), and the RL token metrics as 0.
    """
    model_dir = tiny_moe_dir if model == "moe" else tiny_model_dir
    common = dict(max_steps=2, use_adaptive_entropy=True, entropy_target=10.0, skip_zero_advantage_rows=False)
    grpo = HPTTrainer(
        model_dir,
        length_parity_reward,
        args=make_config(tmp_path / "grpo", gamma=-1, **common),
        train_dataset=make_dataset(),
    )
    grpo.train()
    hpt = HPTTrainer(
        model_dir,
        length_parity_reward,
        args=make_config(tmp_path / "sft", gamma=NUM_GENERATIONS, **common),  # every prompt gated, every step
        train_dataset=make_dataset(),
    )
    hpt.train()
    grpo_keys = {key for log in grpo.state.log_history[:-1] for key in log}
    assert ("aux_loss" in grpo_keys) == (model == "moe") and {"policy_loss", "entropy_coef"} <= grpo_keys
    for log in hpt.state.log_history[:-1]:  # the last entry is the run summary
        assert log["hpt/sft_prompt_ratio"] == 1.0
        missing = {key for key in grpo_keys if log.get(key) is None}
        assert not missing, f"keys GRPO logs that HPT's fully gated step lacks: {sorted(missing)}"
        assert log["entropy"] == 0.0 and log["clip_ratio/region_mean"] == 0.0  # no RL token was trained
        if model == "moe":
            assert log["aux_loss"] > 0  # the load-balancing loss that was applied, on the demonstrations


@pytest.fixture(scope="module")
def tiny_reward_model_dir(tmp_path_factory):
    """A tiny sequence-classification reward model with the tiny tokenizer, loadable by name as TRL loads one."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from hpt_trl.builtin_task.tiny_model import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-reward-model")
    Qwen2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a * b


FEATURE_FAMILIES = {
    "tools": dict(),
    "several-rewards-weighted": dict(reward_weights=[1.0, 0.5]),
    "reward-model": dict(),
    "moe": dict(),
    "mask-truncated-completions": dict(mask_truncated_completions=True, max_completion_length=6),
    "log-completions": dict(log_completions=True),
    "beta": dict(beta=0.1),
    "num-iterations": dict(num_iterations=2),
}


@pytest.mark.parametrize("family", list(FEATURE_FAMILIES))
def test_each_grpo_feature_family_trains_a_mixed_batch(
    tiny_model_dir, tiny_moe_dir, tiny_reward_model_dir, tmp_path, family
):
    """Gated and RL prompts in one batch, with each family of GRPOTrainer features: both terms train."""
    reward_funcs = [mixed_reward]
    if family == "several-rewards-weighted":
        reward_funcs.append(length_parity_reward)
    if family == "reward-model":
        reward_funcs.append(tiny_reward_model_dir)
    model = tiny_moe_dir if family == "moe" else tiny_model_dir
    options = {"max_completion_length": 16, **FEATURE_FAMILIES[family]}
    args = make_config(tmp_path, gamma=0, max_steps=2, per_device_train_batch_size=32, **options)
    extra = {}
    if family == "tools":
        from transformers import AutoTokenizer
        from trl.chat_template_utils import qwen2_5_chat_template

        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        tokenizer.chat_template = qwen2_5_chat_template  # a template TRL can render and parse tool calls with
        extra = dict(tools=[multiply], processing_class=tokenizer)
    trainer = HPTTrainer(model, reward_funcs, args=args, train_dataset=make_dataset(), **extra)
    batches, changed = train_and_check_both_terms(trainer)
    assert changed
    # Every generation batch holds the 8 prompts: the 4 odd ones gated, and the even ones with a correct rollout in RL.
    ratios = [log["hpt/sft_prompt_ratio"] for log in trainer.state.log_history if "hpt/sft_prompt_ratio" in log]
    assert ratios and all(0.5 <= ratio < 1 for ratio in ratios), ratios
    kinds = torch.cat([batch["hpt_row_kind"] for batch in batches])
    assert (kinds == RL_ROW).any() and (kinds == DEMONSTRATION_ROW).any()
    if family == "tools":
        assert all("tool_mask" in batch for batch in batches)
        assert all("tools/call_frequency" in log for log in trainer.state.log_history[:-1])
    if family == "moe":
        assert all(log["aux_loss"] > 0 for log in trainer.state.log_history[:-1])
    if family == "reward-model":
        assert any(key.startswith("rewards/tiny-reward-model") for log in trainer.state.log_history for key in log)
