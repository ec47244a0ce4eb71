import json
import logging

import pandas as pd
import pytest

from hpt_trl.data import HPTScriptArguments, load_hpt_dataset
from hpt_trl.evaluation import render_prompt
from hpt_trl.prompts import llama_prompt
from hpt_trl.rewards import REWARD_FUNCS, accuracy_reward, format_reward, get_reward_funcs


# The authors' Llama-3.1-8B prompt (train_llama.sh: data.zero_temp with data.suffix_prompt appended to the problem).
AUTHORS_LLAMA_PROMPT = (
    "Question:\n{}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\nAnswer:\n"
    "Let's think step by step."
)


SYSTEM = "Reason step by step and put the final answer in \\boxed{}."
PROBLEMS = [("What is 2+3?", "5"), ("What is 4*4?", "16"), ("What is 9-7?", "2")]
# The last demonstration is long, so budgets between the short ones and it split the rows 2 / 1.
DEMONSTRATIONS = ["2+3=5, so \\boxed{5}.", "4*4=16, so \\boxed{16}.", "Subtract. " * 40 + "\\boxed{2}"]


@pytest.fixture
def authors_parquet(tmp_path):
    """A few rows in the schema of the authors' training set (verl parquet, as Elliott/Openr1-Math-46k-8192)."""
    rows = []
    for i, ((problem, answer), demo) in enumerate(zip(PROBLEMS, DEMONSTRATIONS, strict=True)):
        rows.append(
            {
                "data_source": "openr1",
                "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": problem}],
                "target": [{"role": "assistant", "content": demo}],
                "ability": "math",
                "reward_model": {"ground_truth": answer, "style": "rule"},
                "extra_info": {"index": i, "split": "default"},
            }
        )
    path = tmp_path / "openr1.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_chat_with_system_prompt(authors_parquet):
    ds = load_hpt_dataset(str(authors_parquet), keep_system_prompt=True)
    assert ds.column_names == ["prompt", "demonstration", "solution"]
    assert len(ds) == 3
    assert ds[0]["prompt"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2+3?"}]
    assert ds[0]["demonstration"] == DEMONSTRATIONS[0]
    assert ds["solution"] == ["5", "16", "2"]


def test_chat_without_system_prompt(authors_parquet):
    ds = load_hpt_dataset(str(authors_parquet), keep_system_prompt=False)
    assert ds[1]["prompt"] == [{"role": "user", "content": "What is 4*4?"}]


def test_system_prompt_is_dropped_by_default_as_the_authors_do(authors_parquet):
    # data/prepare_train.py of the authors drops the dataset's system prompt (`item['prompt'][1:]`).
    assert HPTScriptArguments().keep_system_prompt is False
    assert HPTScriptArguments().loader_kwargs()["keep_system_prompt"] is False
    ds = load_hpt_dataset(str(authors_parquet))
    assert ds[0]["prompt"] == [{"role": "user", "content": "What is 2+3?"}]


def test_llama_template(authors_parquet):
    ds = load_hpt_dataset(str(authors_parquet), prompt_template="llama", keep_system_prompt=False)
    assert ds[0]["prompt"] == AUTHORS_LLAMA_PROMPT.format("What is 2+3?") == llama_prompt("What is 2+3?")
    with_system = load_hpt_dataset(str(authors_parquet), prompt_template="llama", keep_system_prompt=True)
    assert with_system[0]["prompt"] == SYSTEM + "\n\n" + AUTHORS_LLAMA_PROMPT.format("What is 2+3?")


def test_none_template_keeps_prompt(authors_parquet):
    ds = load_hpt_dataset(str(authors_parquet), prompt_template="none", keep_system_prompt=False)
    assert ds[2]["prompt"] == [{"role": "user", "content": "What is 9-7?"}]


@pytest.mark.parametrize("drop", [True, False])
def test_long_demonstrations_char_budget(authors_parquet, drop, caplog):
    with caplog.at_level(logging.WARNING, logger="hpt_trl.data"):
        ds, stats = load_hpt_dataset(
            str(authors_parquet), max_demonstration_chars=100, drop_long_demonstrations=drop, return_stats=True
        )
    assert stats.num_rows_in == 3
    assert stats.num_long_demonstrations == 1
    assert stats.num_dropped_long_demonstrations == (1 if drop else 0)
    assert stats.num_rows_out == len(ds) == (2 if drop else 3)
    assert ds["solution"] == (["5", "16"] if drop else ["5", "16", "2"])
    assert "1 of 3 demonstrations exceed" in caplog.text


def test_long_demonstrations_and_prompts_token_budget(authors_parquet, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # one token per byte
    ds, stats = load_hpt_dataset(
        str(authors_parquet),
        tokenizer=tokenizer,
        max_demonstration_tokens=len(DEMONSTRATIONS[1]) + 1,  # + EOS: the two short ones just fit
        drop_long_demonstrations=True,
        return_stats=True,
    )
    assert (stats.num_long_demonstrations, stats.num_dropped_long_demonstrations, len(ds)) == (1, 1, 2)

    # Rendered chat prompts are ~100 bytes with the system prompt and ~45 without.
    with pytest.raises(ValueError, match="No rows left"):
        load_hpt_dataset(str(authors_parquet), tokenizer=tokenizer, max_prompt_tokens=60, keep_system_prompt=True)
    ds, stats = load_hpt_dataset(
        str(authors_parquet), tokenizer=tokenizer, max_prompt_tokens=60, keep_system_prompt=False, return_stats=True
    )
    assert stats.num_dropped_long_prompts == 0 and len(ds) == 3


def test_token_budget_needs_tokenizer(authors_parquet):
    with pytest.raises(ValueError, match="need the model's tokenizer"):
        load_hpt_dataset(str(authors_parquet), max_demonstration_tokens=8192)


def test_generic_columns_from_jsonl(tmp_path):
    path = tmp_path / "generic.jsonl"
    rows = [
        {"question": "What is 1+1?", "answer": {"value": 2}, "expert": "1+1=2. \\boxed{2}"},
        {"question": "What is 3+3?", "answer": {"value": 6}, "expert": "3+3=6. \\boxed{6}"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ds = load_hpt_dataset(
        str(path), prompt_column="question", demonstration_column="expert", solution_column="answer.value"
    )
    assert ds.column_names == ["prompt", "demonstration", "solution"]
    assert ds[0]["prompt"] == [{"role": "user", "content": "What is 1+1?"}]
    assert ds["solution"] == ["2", "6"]
    assert ds[1]["demonstration"] == "3+3=6. \\boxed{6}"
    llama = load_hpt_dataset(
        str(path),
        prompt_template="llama",
        prompt_column="question",
        demonstration_column="expert",
        solution_column="answer.value",
    )
    assert llama[0]["prompt"] == AUTHORS_LLAMA_PROMPT.format("What is 1+1?")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt_column": "question"}, r"Column 'question' not found.*`prompt_column`"),
        ({"demonstration_column": "demo"}, r"Column 'demo' not found.*`demonstration_column`"),
        ({"solution_column": "reward_model.answer"}, r"Column 'reward_model.answer' not found.*`solution_column`"),
        ({"prompt_template": "alpaca"}, "prompt_template must be one of"),
    ],
)
def test_errors(authors_parquet, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_hpt_dataset(str(authors_parquet), **kwargs)


def test_missing_file_and_bad_demonstration(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hpt_dataset(str(tmp_path / "missing.parquet"))
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "target": "", "reward_model": {"ground_truth": "1"}}) + "\n")
    with pytest.raises(ValueError, match="column 'target', row 0 is empty"):
        load_hpt_dataset(str(path))


def test_reward_registry_and_script_arguments():
    assert REWARD_FUNCS == {"accuracy": accuracy_reward, "format": format_reward}
    assert get_reward_funcs(["accuracy", "format"]) == [accuracy_reward, format_reward]
    with pytest.raises(ValueError, match="Unknown reward function"):
        get_reward_funcs(["length"])
    args = HPTScriptArguments()
    assert args.dataset_name == "Elliott/Openr1-Math-46k-8192" and args.reward_funcs == ["accuracy"]
    assert args.loader_kwargs()["solution_column"] == "reward_model.ground_truth"
    with pytest.raises(ValueError, match="prompt_template"):
        HPTScriptArguments(prompt_template="alpaca")
    with pytest.raises(ValueError, match="dataset_streaming=True is not supported"):
        HPTScriptArguments(dataset_streaming=True)


def test_loaded_dataset_trains_with_hpt_trainer(authors_parquet, tmp_path):
    from hpt_trl import HPTConfig, HPTTrainer
    from hpt_trl.builtin_task.tiny_model import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "m")
    ds = load_hpt_dataset(str(authors_parquet), keep_system_prompt=False)
    args = HPTConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=16,
        max_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
    )
    trainer = HPTTrainer(str(model_dir), reward_funcs=[accuracy_reward], args=args, train_dataset=ds)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "hpt/sft_prompt_ratio" in entry]
    assert logs, trainer.state.log_history
    # A random tiny model solves nothing, so with gamma=0 every prompt is gated to SFT.
    assert logs[0]["hpt/sft_prompt_ratio"] == pytest.approx(1.0)


def _trl_prompt_ids(prompts: list, tokenizer) -> list[list[int]]:
    """Prompt token ids as TRL's GRPOTrainer computes them in training (its own `_tokenize_prompts`)."""
    from types import SimpleNamespace

    from trl import GRPOTrainer

    trainer = SimpleNamespace(
        processing_class=tokenizer,
        _is_vlm=False,
        environment_factories=None,
        tools=None,
        chat_template=None,
        chat_template_kwargs={},
    )
    prompt_ids, _, _ = GRPOTrainer._tokenize_prompts(trainer, prompts)
    return [list(ids) for ids in prompt_ids]


@pytest.mark.parametrize("template", ["chat", "llama"])
def test_training_and_evaluation_render_the_same_prompt_ids(tmp_path, tiny_model_dir, template):
    """The loader's prompt, tokenized as TRL does in training, equals what `hpt-eval` feeds the model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Surrounding whitespace is part of the problem on both sides (the authors strip nothing).
    problems = ["What is 2+3?", "  Compute $\\frac{1}{2}+\\frac{1}{3}$.\n", "Line one.\n\nLine two?"]
    rows = [
        {
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": problem}],
            "target": [{"role": "assistant", "content": "\\boxed{1}"}],
            "reward_model": {"ground_truth": "1"},
        }
        for problem in problems
    ]
    path = tmp_path / "rows.parquet"
    pd.DataFrame(rows).to_parquet(path)
    ds = load_hpt_dataset(str(path), prompt_template=template)  # the default drops the system prompt
    trained = _trl_prompt_ids([row["prompt"] for row in ds], tokenizer)
    for problem, ids in zip(problems, trained, strict=True):
        text, evaluated = render_prompt(problem, tokenizer, template=template)
        assert ids == evaluated, (template, problem)
        assert problem in text
    if template == "llama":
        assert ds[1]["prompt"] == AUTHORS_LLAMA_PROMPT.format(problems[1])
        assert tokenizer.decode(trained[1]) == AUTHORS_LLAMA_PROMPT.format(problems[1])


def test_a_malformed_jsonl_file_is_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    good = json.dumps({"prompt": "Q", "target": "A \\boxed{1}", "reward_model": {"ground_truth": "1"}})
    path.write_text(good + "\n" + '{"prompt": "Q", "target": \n')
    with pytest.raises(ValueError, match=rf"Could not read the dataset file {path}: JSON parse error.*row 1"):
        load_hpt_dataset(str(path))
    cut = tmp_path / "cut.parquet"
    pd.DataFrame({"prompt": ["Q"] * 64, "target": ["A"] * 64}).to_parquet(cut)
    cut.write_bytes(cut.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"Could not read the dataset file {cut}: .*corrupted"):
        load_hpt_dataset(str(cut))


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"prompt_column": "question"}, "dataset_prompt_column"),
        ({"demonstration_column": "demo"}, "dataset_demonstration_column"),
        ({"solution_column": "reward_model.answer"}, "dataset_solution_column"),
    ],
)
def test_a_missing_column_names_the_option_of_train_py(authors_parquet, kwargs, option):
    """train.py's options are `--dataset_*_column`; the loader's arguments alone sent script users to the wrong one."""
    with pytest.raises(ValueError, match=rf"Set `--{option}` \(recipe key `{option}`; `{next(iter(kwargs))}` of"):
        load_hpt_dataset(str(authors_parquet), **kwargs)
