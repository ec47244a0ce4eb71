"""Tests of the second built-in task (`hpt_trl.builtin_task.lookup_task`): pointer following in a table."""

import random
import re

import pytest

from hpt_trl.answer_extraction import extract_boxed_answer
from hpt_trl.builtin_task import base_model
from hpt_trl.builtin_task.arithmetic_task import (
    ARITHMETIC,
    EASY_DIFFICULTY,
    HARD_DIFFICULTY,
    split_of,
)
from hpt_trl.builtin_task.base_model import base_model_path, base_model_settings, task_from_settings
from hpt_trl.builtin_task.demo import ArithmeticTaskArguments
from hpt_trl.builtin_task.lookup_task import LOOKUP, LookupTask
from hpt_trl.verification import verify_answer


def parse_question(question: str) -> tuple[dict[int, int], int, int]:
    """The table, start digit and number of steps of a question, read independently of the generator."""
    match = re.fullmatch(r"((?:\d>\d,)*\d>\d)\|(\d)(>+)", question)
    assert match, question
    entries = [entry.split(">") for entry in match.group(1).split(",")]
    table = {int(key): int(value) for key, value in entries}
    assert len(table) == len(entries)  # every key once
    return table, int(match.group(2)), len(match.group(3))


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_each_line_is_a_table_entry_and_the_answer_follows_them(difficulty):
    rng = random.Random(0)
    for _ in range(50):
        problem = LOOKUP.sample_problem(rng, difficulty)
        table, start, steps = parse_question(problem.question)
        assert steps == difficulty == problem.difficulty
        # A permutation of the ten digits with no fixed point.
        assert sorted(table) == sorted(table.values()) == list(range(10))
        assert all(key != value for key, value in table.items())
        *lines, boxed = problem.demonstration.split("\n")
        value = start
        for line in lines:
            assert line == f"{value}>{table[value]}"  # an easy problem of the same table, answered
            value = table[value]
        assert problem.answer == value and boxed == f"\\boxed{{{value}}}"
        # The answer is graded by the training reward's verifier, as the arithmetic task's.
        assert extract_boxed_answer(problem.demonstration) == str(problem.answer)
        assert verify_answer(problem.demonstration, str(problem.answer))


def test_a_hard_problem_stopped_after_its_first_line_is_wrong():
    # Why the base, which writes one line, solves no hard problem by chance.
    rng = random.Random(1)
    for _ in range(200):
        problem = LOOKUP.sample_problem(rng, HARD_DIFFICULTY)
        first_line = problem.demonstration.split("\n")[0]
        assert int(first_line.split(">")[1]) != problem.answer
    assert not verify_answer(f"{first_line}\n\\boxed{{{first_line[-1]}}}", str(problem.answer))


def test_entries_are_found_by_key_not_position():
    rng = random.Random(2)
    orders = {tuple(parse_question(LOOKUP.sample_problem(rng).question)[0]) for _ in range(20)}
    assert len(orders) == 20


def test_pretraining_shows_easy_questions_and_line_completions_never_a_hard_question():
    settings = base_model_settings(task=LOOKUP, line_completion_fraction=0.5)
    examples = base_model.pretraining_examples(settings, 60)
    completions = 0
    for question, prefix, target in examples:
        table, start, steps = parse_question(question)
        assert steps == 1 and split_of(question) == "train"
        if prefix:  # the first step answered, the second line's start given, its value the target
            completions += 1
            first_line, second_start = prefix.split("\n")
            assert first_line == f"{start}>{table[start]}" and second_start == f"{table[start]}>"
            value = table[table[start]]
        else:
            value = table[start]
            assert target == f"{start}>{value}\n\\boxed{{{value}}}"
            continue
        assert target == f"{value}\n\\boxed{{{value}}}"
    assert 15 < completions < 45


def test_the_task_is_part_of_the_base_model_settings(tmp_path):
    assert task_from_settings(base_model_settings(task=LOOKUP)["task"]) == LOOKUP
    assert task_from_settings(base_model_settings()["task"]) == ARITHMETIC
    assert base_model_path(tmp_path, task=LOOKUP) != base_model_path(tmp_path)
    with pytest.raises(ValueError, match="num_symbols must be between 2 and 10"):
        LookupTask(num_symbols=11)


def test_the_demo_arguments_build_the_lookup_datasets():
    train, evaluation = ArithmeticTaskArguments(task_num_train=20, task_num_eval=10).datasets(0, "builtin:lookup")
    for dataset in (train, evaluation):
        for prompt, difficulty in zip(dataset["prompt"], dataset["difficulty"], strict=True):
            assert parse_question(prompt[0]["content"])[2] == difficulty
    assert sorted(set(evaluation["difficulty"])) == [EASY_DIFFICULTY, HARD_DIFFICULTY]
