"""Input checks (`hpt_trl.input_checks`, `hpt_trl.demonstrations`): bad input fails with the fix before the model loads or generation starts."""

import pytest
from hpt_testing import make_config, make_dataset, odd_prompts_wrong
from tokenizers import normalizers
from transformers import AutoTokenizer
from trl import GRPOConfig

from hpt_trl import HPTTrainer


class GenerationCalled(AssertionError):
    pass


def trainer_that_must_not_generate(monkeypatch):
    def fail(*args, **kwargs):
        raise GenerationCalled("generation ran before the bad input was reported")

    monkeypatch.setattr(HPTTrainer, "_generate", fail)


def test_missing_demonstration_column(tiny_model_dir, tmp_path, monkeypatch):
    trainer_that_must_not_generate(monkeypatch)
    dataset = make_dataset().remove_columns("demonstration")
    with pytest.raises(ValueError, match="no demonstration column 'demonstration'.*gamma=-1"):
        HPTTrainer(tiny_model_dir, odd_prompts_wrong, args=make_config(tmp_path), train_dataset=dataset)
    # Without SFT the column is not needed.
    HPTTrainer(tiny_model_dir, odd_prompts_wrong, args=make_config(tmp_path, gamma=-1), train_dataset=dataset)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("   ", "column 'demonstration', row 3 is empty"),
        (None, "row 3 is a NoneType"),
        ([{"role": "user", "content": "x"}], "role 'user'"),
        ([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], "list of 2 messages"),
    ],
)
def test_bad_demonstration_rows(tiny_model_dir, tmp_path, monkeypatch, value, message):
    trainer_that_must_not_generate(monkeypatch)
    dataset = make_dataset().to_list()
    dataset[3]["demonstration"] = value
    from datasets import Dataset

    if isinstance(value, list):  # a column can't mix strings and message lists: make every row a message list
        for i, row in enumerate(dataset):
            if i != 3:
                row["demonstration"] = [{"role": "assistant", "content": row["demonstration"]}]
    dataset = Dataset.from_list(dataset)
    with pytest.raises(ValueError, match=message):
        HPTTrainer(tiny_model_dir, odd_prompts_wrong, args=make_config(tmp_path), train_dataset=dataset)


def test_gate_reward_naming_no_reward_function(tmp_path):
    # No model at that path: the error must come before the model is loaded.
    for gate_reward, message in (("accuracy", r"names no reward function.*odd_prompts_wrong"), (3, "there are 1")):
        args = make_config(tmp_path, gate_reward=gate_reward)
        with pytest.raises(ValueError, match=message):
            HPTTrainer(str(tmp_path / "no-model"), odd_prompts_wrong, args=args, train_dataset=make_dataset())


def test_columns_the_rewards_and_trl_need_are_checked_before_the_model_loads(tmp_path):
    from hpt_trl.rewards import accuracy_reward

    no_model = str(tmp_path / "no-model")
    with pytest.raises(ValueError, match=r"'accuracy_reward' takes \['solution'\].*--dataset_solution_column"):
        HPTTrainer(no_model, accuracy_reward, args=make_config(tmp_path), train_dataset=make_dataset())
    without_prompt = make_dataset().rename_column("prompt", "question")
    with pytest.raises(ValueError, match="no 'prompt' column.*--dataset_prompt_column"):
        HPTTrainer(no_model, odd_prompts_wrong, args=make_config(tmp_path), train_dataset=without_prompt)
    # A parameter with a default, or one TRL supplies, is not a column the dataset must have.

    def optional_solution(completions, prompts, trainer_state, solution=None, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(OSError):  # past the checks: the (missing) model is what fails now
        HPTTrainer(no_model, optional_solution, args=make_config(tmp_path), train_dataset=make_dataset())


def test_gate_reward_by_name_picks_that_function(tiny_model_dir, tmp_path):
    def always_right(completions, **kwargs):
        return [1.0] * len(completions)

    args = make_config(tmp_path, gate_reward="odd_prompts_wrong", max_steps=1, per_device_train_batch_size=32)
    trainer = HPTTrainer(tiny_model_dir, [always_right, odd_prompts_wrong], args=args, train_dataset=make_dataset())
    assert trainer.gate_reward_index == 1
    trainer.train()
    assert trainer.state.log_history[0]["hpt/sft_prompt_ratio"] == 0.5


def test_demonstration_that_tokenizes_to_nothing(tiny_model_dir, tmp_path, monkeypatch):
    trainer_that_must_not_generate(monkeypatch)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # A tokenizer that normalises zero-width spaces away: a demonstration made of them has no tokens.
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence(
        [backend.normalizer or normalizers.NFC(), normalizers.Replace("\u200b", "")]
    )
    dataset = make_dataset().map(lambda x: {"demonstration": "\u200b\u200b"})
    args = make_config(tmp_path, per_device_train_batch_size=32)
    trainer = HPTTrainer(
        tiny_model_dir, odd_prompts_wrong, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    with pytest.raises(ValueError, match="tokenizes to no tokens"):
        trainer.train()


def test_grpo_config_is_refused_with_the_fix(tiny_model_dir, tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, use_cpu=True)
    with pytest.raises(TypeError, match="needs an HPTConfig"):
        HPTTrainer(tiny_model_dir, odd_prompts_wrong, args=args, train_dataset=make_dataset())


def test_vllm_missing_fails_before_loading_the_model(tiny_model_dir, tmp_path, monkeypatch):
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing vLLM was reported")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    args = make_config(tmp_path, use_vllm=True, vllm_mode="colocate")
    with pytest.raises(ImportError, match=r"use_vllm=True but vLLM is not installed.*hpt-trl\[vllm\]"):
        HPTTrainer(tiny_model_dir, odd_prompts_wrong, args=args, train_dataset=make_dataset())
