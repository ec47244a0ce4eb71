"""Tests of the built-in arithmetic task (`hpt_trl.builtin_task.arithmetic_task`) and its cached base model."""

import json
import random
import re
from collections import Counter

import pytest
import torch
from transformers import GenerationConfig

from hpt_trl.answer_extraction import extract_boxed_answer
from hpt_trl.builtin_task import base_model
from hpt_trl.builtin_task.arithmetic_task import (
    EASY_DIFFICULTY,
    HARD_DIFFICULTY,
    EvalResult,
    TaskSpec,
    evaluate_accuracy,
    generate_problems,
    is_held_out,
    make_arithmetic_datasets,
    render_question,
    split_of,
)
from hpt_trl.builtin_task.base_model import base_model_path, base_model_settings, get_base_model, load_base_model
from hpt_trl.builtin_task.lookup_task import LOOKUP
from hpt_trl.builtin_task.rearrange_task import REARRANGE
from hpt_trl.builtin_task.tiny_model import build_char_tokenizer, build_tiny_qwen2
from hpt_trl.verification import verify_answer


# Small enough that a training step is milliseconds: these tests check the caching logic, not what the model learns.
TINY_BASE = {"num_steps": 2, "batch_size": 4, "warmup_steps": 1, "model_kwargs": {"hidden_size": 16}}


def expression_of(prompt) -> str:
    return re.fullmatch(r"([0-9+<>-]+)=[a-z]*", prompt[0]["content"]).group(1)


def true_value(expression: str) -> int:
    # Independent of the generator: a chain of + and - is the sum of its signed terms; `>` keeps the larger and `<`
    # the smaller of the value so far and the next number, left to right.
    if re.search(r"[<>]", expression):
        value, *rest = re.split(r"([<>])", expression)
        value = int(value)
        for op, number in zip(rest[::2], rest[1::2], strict=True):
            value = max(value, int(number)) if op == ">" else min(value, int(number))
        return value
    return sum(int(term) for term in re.findall(r"[+-]?\d+", expression))


def test_same_seed_same_datasets():
    first = make_arithmetic_datasets(50, 20, {EASY_DIFFICULTY: 0.5, HARD_DIFFICULTY: 0.5}, seed=3)
    second = make_arithmetic_datasets(50, 20, {EASY_DIFFICULTY: 0.5, HARD_DIFFICULTY: 0.5}, seed=3)
    for a, b in zip(first, second):
        assert a.to_list() == b.to_list()


def test_seed_changes_train_but_not_held_out_set():
    train_0, eval_0 = make_arithmetic_datasets(50, 20, EASY_DIFFICULTY, seed=0)
    train_1, eval_1 = make_arithmetic_datasets(50, 20, EASY_DIFFICULTY, seed=1)
    assert list(train_0["demonstration"]) != list(train_1["demonstration"])
    # Every training seed is evaluated on the same problems, so runs with different seeds are comparable.
    assert eval_0.to_list() == eval_1.to_list()
    assert list(make_arithmetic_datasets(0, 20, EASY_DIFFICULTY, eval_seed=7)[1]["solution"]) != list(
        eval_0["solution"]
    )


@pytest.mark.parametrize("difficulty", [EASY_DIFFICULTY, HARD_DIFFICULTY, {1: 0.3, 2: 0.4, 3: 0.3}])
def test_the_three_splits_are_disjoint(difficulty):
    train, held_out = make_arithmetic_datasets(3000, 300, difficulty, seed=0)
    _, validation = make_arithmetic_datasets(0, 300, difficulty, eval_split="validation")
    train_expressions = {expression_of(prompt) for prompt in train["prompt"]}
    for evaluation, split in ((held_out, "held_out"), (validation, "validation")):
        expressions = [expression_of(prompt) for prompt in evaluation["prompt"]]
        assert len(set(expressions)) == len(expressions) == 300
        assert train_expressions.isdisjoint(expressions)
        assert {split_of(e) for e in expressions} == {split}
    assert {expression_of(p) for p in held_out["prompt"]}.isdisjoint(expression_of(p) for p in validation["prompt"])
    assert all(is_held_out(e) for e in map(expression_of, held_out["prompt"]))
    assert {split_of(e) for e in train_expressions} == {"train"}
    with pytest.raises(ValueError, match="eval_split"):
        make_arithmetic_datasets(10, 10, eval_split="train")


@pytest.mark.parametrize("task", [LOOKUP, REARRANGE], ids=["lookup", "rearrange"])
def test_the_other_tasks_use_the_same_three_splits(task):
    sets = {
        split: [p.question for p in generate_problems(60, {1: 0.5, 2: 0.5}, split=split, task=task)]
        for split in ("train", "validation", "held_out")
    }
    assert all(split_of(question) == split for split, questions in sets.items() for question in questions)
    assert len(set(sets["validation"])) == len(sets["validation"]) == 60
    assert not set(sets["train"]) & set(sets["held_out"]) and not set(sets["train"]) & set(sets["validation"])


def test_held_out_set_too_large_for_the_level_raises():
    # One-digit values give about a hundred distinct one-step problems, a fifth of them held out.
    with pytest.raises(ValueError, match="distinct held_out problems"):
        generate_problems(200, EASY_DIFFICULTY, split="held_out", task=TaskSpec("+-", max_value=9, max_step=9))


def test_a_problem_is_always_asked_the_same_way_and_pretraining_varies_the_filler():
    first, second = make_arithmetic_datasets(0, 50, EASY_DIFFICULTY)[1], make_arithmetic_datasets(0, 50, 1)[1]
    assert first["prompt"] == second["prompt"]
    fillers = [prompt[0]["content"].split("=")[1] for prompt in first["prompt"]]
    assert len(set(map(len, fillers))) > 10 and max(map(len, fillers)) <= 24
    rng = random.Random(0)
    assert len({render_question("37+8", rng) for _ in range(20)}) > 10
    assert render_question("37+8") == render_question("37+8")


def test_comparison_operations_keep_the_larger_or_the_smaller_number_line_by_line():
    comparison = TaskSpec("<>", max_value=59, max_step=59)
    train, held_out = make_arithmetic_datasets(200, 50, {1: 0.5, 2: 0.5}, task=comparison)
    operators = set()
    for row in [*train, *held_out]:
        expression = expression_of(row["prompt"])
        operators |= set(re.findall(r"[<>+-]", expression))
        assert row["solution"] == str(true_value(expression))
        assert verify_answer(row["demonstration"], row["solution"])
        *lines, boxed = row["demonstration"].split("\n")
        assert len(lines) == row["difficulty"] and boxed == f"\\boxed{{{row['solution']}}}"
        for line in lines:
            lhs, result = line.split("=")
            assert int(result) == true_value(lhs) and 0 <= int(result) <= 59
    assert operators == {"<", ">"}
    with pytest.raises(ValueError, match="operations"):
        TaskSpec("*")


@pytest.mark.parametrize("difficulty", [2, 3])
def test_every_line_of_a_long_demonstration_is_an_easy_problem_of_the_pretrained_range(difficulty):
    # The premise of the task: a hard problem needs no skill the easy problems do not teach, only the format.
    for problem in generate_problems(300, difficulty, seed=0):
        *lines, _ = problem.demonstration.split("\n")
        for index, line in enumerate(lines):
            first, op, second, result = re.fullmatch(r"(\d+)([+-])(\d+)=(\d+)", line).groups()
            assert 0 <= int(first) <= 59 and 1 <= int(second) <= 19
            assert 0 <= int(result) <= (59 if index < len(lines) - 1 else 78)


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_demonstrations_are_correct_and_verify(difficulty):
    train, held_out = make_arithmetic_datasets(100, 20, difficulty, seed=0)
    for row in [*train, *held_out]:
        expression = expression_of(row["prompt"])
        answer = true_value(expression)
        assert row["solution"] == str(answer)
        assert row["difficulty"] == difficulty
        assert extract_boxed_answer(row["demonstration"]) == str(answer)
        assert verify_answer(row["demonstration"], row["solution"])
        # Each line is one correct operation on the previous result, and no number is negative.
        *steps, boxed = row["demonstration"].split("\n")
        assert boxed == f"\\boxed{{{answer}}}"
        value = None
        for step in steps:
            lhs, result = step.split("=")
            left = int(re.match(r"\d+", lhs).group())
            assert value is None or left == value
            value = true_value(lhs)
            assert int(result) == value >= 0
        assert value == answer


def test_difficulty_is_the_number_of_steps():
    for difficulty in (1, 2, 3, 5):
        problems = generate_problems(30, difficulty, seed=0)
        assert {p.demonstration.count("\n") for p in problems} == {difficulty}
        assert {len(re.findall(r"[+-]", p.expression)) for p in problems} == {difficulty}
    lengths = [max(len(p.demonstration) for p in generate_problems(100, d)) for d in (1, 2, 3)]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    # Tens of characters: every character is a token for the tiny model.
    assert lengths[1] <= 40


def test_mixed_difficulty_counts():
    train, held_out = make_arithmetic_datasets(10, 7, {EASY_DIFFICULTY: 0.7, HARD_DIFFICULTY: 0.3}, seed=0)
    assert Counter(train["difficulty"]) == {EASY_DIFFICULTY: 7, HARD_DIFFICULTY: 3}
    assert sum(Counter(held_out["difficulty"]).values()) == 7
    assert set(held_out["difficulty"]) == {EASY_DIFFICULTY, HARD_DIFFICULTY}
    # Levels are shuffled together, not in blocks.
    assert list(train["difficulty"])[:7] != [EASY_DIFFICULTY] * 7
    with pytest.raises(ValueError):
        make_arithmetic_datasets(10, 0, {EASY_DIFFICULTY: 0.0})
    with pytest.raises(ValueError):
        make_arithmetic_datasets(10, 0, 0)


class ScriptedModel(torch.nn.Module):
    """
    Stands in for a causal LM in `evaluate_accuracy`: it reads each prompt back from the token ids and answers with the
    correct demonstration (or a wrong one), so the whole path (chat template, left padding, decoding, grading) is real.
    """

    def __init__(self, tokenizer, answers_correctly: bool):
        super().__init__()
        self.tokenizer = tokenizer
        self.answers_correctly = answers_correctly
        self.calls = []
        # What the evaluation backend reads the stop token from, as on a real model.
        self.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, input_ids, attention_mask, num_return_sequences=1, **kwargs):
        self.calls.append({"shape": tuple(input_ids.shape), **kwargs})
        # Left padding: every row's real tokens end at the last column.
        assert attention_mask[:, -1].all()
        assert (attention_mask.cummax(dim=1).values == attention_mask).all()
        completions = []
        for text in self.tokenizer.batch_decode(input_ids, skip_special_tokens=False):
            value = true_value(re.search(r"user\n([0-9+-]+)=", text).group(1))
            answer = value if self.answers_correctly else value + 1
            completion = f"reasoning\n\\boxed{{{answer}}}"
            ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            completions.extend([ids] * num_return_sequences)
        width = max(len(ids) for ids in completions)
        padded = [ids + [self.tokenizer.pad_token_id] * (width - len(ids)) for ids in completions]
        return torch.cat([input_ids.repeat_interleave(num_return_sequences, dim=0), torch.tensor(padded)], dim=1)


@pytest.mark.parametrize("answers_correctly", [True, False])
def test_evaluate_accuracy_generates_and_grades_through_the_evaluation_package(answers_correctly):
    tokenizer = build_char_tokenizer()
    _, held_out = make_arithmetic_datasets(0, 10, {1: 0.5, 3: 0.5})
    model = ScriptedModel(tokenizer, answers_correctly)

    greedy = evaluate_accuracy(model, tokenizer, held_out, batch_size=4)
    assert greedy.accuracy == (1.0 if answers_correctly else 0.0)
    assert greedy.correct_counts == [1 if answers_correctly else 0] * 10
    assert len(model.calls) == 3  # 10 prompts in batches of 4
    assert not model.calls[0]["do_sample"]

    sampled = evaluate_accuracy(model, tokenizer, held_out, num_samples=3, do_sample=True, batch_size=6)
    assert sampled.correct_counts == [3 if answers_correctly else 0] * 10
    assert [len(group) for group in sampled.completions] == [3] * 10
    assert model.calls[-1]["do_sample"] and model.calls[-1]["shape"][0] == 2  # 6 sequences = 2 prompts x 3 samples
    assert sampled.pass_at_k(3) == (1.0 if answers_correctly else 0.0)
    assert sampled.accuracy_by(held_out["difficulty"]) == {1: sampled.accuracy, 3: sampled.accuracy}


def test_eval_result_metrics():
    result = EvalResult(accuracy=0.5, correct_counts=[0, 2, 4, 2], num_samples=4, completions=[])
    assert result.pass_at_k(1) == pytest.approx(0.5)
    assert result.pass_at_k(4) == pytest.approx(0.75)
    assert result.accuracy_by(["easy", "easy", "hard", "hard"]) == {"easy": 0.25, "hard": 0.75}


def test_evaluate_accuracy_runs_a_real_model():
    tokenizer = build_char_tokenizer()
    model = build_tiny_qwen2(tokenizer)
    model.train()
    _, held_out = make_arithmetic_datasets(0, 5, EASY_DIFFICULTY)
    result = evaluate_accuracy(model, tokenizer, held_out, num_samples=2, do_sample=True, max_new_tokens=8)
    assert 0.0 <= result.accuracy <= 1.0 and len(result.correct_counts) == 5
    assert all(len(group) == 2 for group in result.completions)
    assert model.training  # the caller's mode is restored
    with pytest.raises(ValueError, match="do_sample"):
        evaluate_accuracy(model, tokenizer, held_out, num_samples=2)


def test_pretraining_masks_the_prompt_and_shows_line_completions_but_no_hard_question():
    tokenizer = build_char_tokenizer()
    settings = base_model_settings(line_completion_fraction=0.5)
    examples = base_model.pretraining_examples(settings, 40)
    batch = base_model._collate(
        [base_model._encode(tokenizer, *example) for example in examples], tokenizer.pad_token_id
    )
    completions = 0
    for row, (question, prefix, target) in enumerate(examples):
        labels = batch["labels"][row]
        assert tokenizer.decode(labels[labels != -100]) == target + tokenizer.eos_token
        text = tokenizer.decode(batch["input_ids"][row][batch["attention_mask"][row].bool()])
        assert text.endswith(prefix + target + tokenizer.eos_token)
        expression = expression_of([{"content": question}])
        assert len(re.findall(r"[+-]", expression)) == 1 and split_of(expression) == "train"
        if prefix:  # a line completion: the first line answered, the second line's value is the target
            completions += 1
            first_line, second_start = prefix.split("\n")
            assert first_line == f"{expression}={true_value(expression)}"
            value = true_value(second_start.rstrip("="))
            assert target == f"{value}\n\\boxed{{{value}}}"
        else:  # an easy problem in full
            value = true_value(expression)
            assert target == f"{expression}={value}\n\\boxed{{{value}}}"
    assert 10 < completions < 30


def test_get_base_model_caches(tmp_path, monkeypatch):
    path = get_base_model(tmp_path, seed=0, show_progress=False, **TINY_BASE)
    assert path.parent == tmp_path and path.name.startswith("base-")
    assert (path / "base_model_settings.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folder left behind
    model, tokenizer = load_base_model(path)
    assert model.config.hidden_size == 16 and tokenizer.eos_token == "<|im_end|>"

    def no_training(*args, **kwargs):
        raise AssertionError("a cached base model was trained again")

    monkeypatch.setattr(base_model, "_pretrain", no_training)
    assert get_base_model(tmp_path, seed=0, show_progress=True, **TINY_BASE) == path
    assert base_model_path(tmp_path, seed=0, **TINY_BASE) == path
    with pytest.raises(AssertionError, match="trained again"):
        get_base_model(tmp_path, seed=1, show_progress=False, **TINY_BASE)


def test_the_default_settings_use_the_shipped_base(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("pretrained although the base ships")

    monkeypatch.setattr(base_model, "_pretrain", no_training)
    # The shipped base was pretrained with today's defaults: a change of the defaults or of the cache version must
    # ship a new one (or the demo pretrains again, on each machine its own base).
    assert base_model.shipped_base_settings() == base_model_settings()
    path = get_base_model(tmp_path, show_progress=False)
    assert path == base_model.SHIPPED_BASE and not list(tmp_path.iterdir())
    model, tokenizer = load_base_model(path)
    assert model.config.hidden_size == base_model.DEFAULT_MODEL_KWARGS["hidden_size"]
    assert tokenizer.get_vocab() == build_char_tokenizer().get_vocab()
    # Any other setting, or use_shipped=False, pretrains.
    with pytest.raises(AssertionError, match="pretrained although"):
        get_base_model(tmp_path, seed=1, show_progress=False)
    with pytest.raises(AssertionError, match="pretrained although"):
        get_base_model(tmp_path, use_shipped=False, show_progress=False)


def test_pretraining_stops_at_the_target_accuracy(tmp_path):
    settings = {**TINY_BASE, "num_steps": 5, "num_validation": 4}
    # Any model reaches 0% accuracy, so the first check (after one step) stops training.
    stopped = get_base_model(tmp_path, target_accuracy=0.0, eval_every=1, show_progress=False, **settings)
    assert json.loads((stopped / "base_model_settings.json").read_text())["steps_done"] == 1
    # An untrained model never reaches 100%, so training runs to the end.
    full = get_base_model(tmp_path, target_accuracy=1.0, eval_every=2, show_progress=False, **settings)
    stats = json.loads((full / "base_model_settings.json").read_text())
    assert stats["steps_done"] == 5 and stats["validation_accuracy"] == 0.0


def test_base_model_is_deterministic(tmp_path):
    first = get_base_model(tmp_path / "a", seed=0, show_progress=False, **TINY_BASE)
    second = get_base_model(tmp_path / "b", seed=0, show_progress=False, **TINY_BASE)
    first_state = load_base_model(first)[0].state_dict()
    second_state = load_base_model(second)[0].state_dict()
    assert all(torch.equal(first_state[name], second_state[name]) for name in first_state)
    untrained = build_tiny_qwen2(build_char_tokenizer(), hidden_size=16).state_dict()
    assert not torch.equal(first_state["model.norm.weight"], untrained["model.norm.weight"])


def test_cache_key_covers_every_setting(tmp_path):
    default = base_model_path(tmp_path)
    assert base_model_path(tmp_path, seed=0, num_steps=base_model_settings()["num_steps"]) == default
    variants = [
        {"seed": 1},
        {"task": TaskSpec("<>", max_value=59, max_step=59)},
        {"task": TaskSpec("+-", max_value=50)},
        {"line_completion_fraction": 0.0},
        {"num_steps": 10},
        {"schedule_steps": 2000},
        {"batch_size": 8},
        {"learning_rate": 1e-3},
        {"warmup_steps": 0},
        {"target_accuracy": 0.5},
        {"target_accuracy": None},
        {"eval_every": 10},
        {"num_validation": 64},
        {"model_kwargs": {"num_hidden_layers": 3}},
    ]
    paths = {base_model_path(tmp_path, **variant) for variant in variants}
    assert default not in paths and len(paths) == len(variants)
