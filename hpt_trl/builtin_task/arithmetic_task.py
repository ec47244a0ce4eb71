"""A built-in reasoning task with verifiable answers: chained additions and subtractions with worked demonstrations.

HPT needs prompts with a checkable answer (for the RL reward and for counting correct rollouts) and an expert
demonstration per prompt (for the SFT branch). This module generates both offline, deterministically for a seed:

    prompt:         "37+8-19=kqzv"
    demonstration:  "37+8=45\n45-19=26\n\boxed{26}"
    solution:       "26"

The question is the expression, `=`, then a filler of 0 to 24 lowercase letters. The filler moves the operands to
a different distance from the end of the prompt in every problem, so a model cannot solve the task by reading
digits at fixed positions: it has to find the operands by what they are, which is the skill a longer expression
needs too. A problem's filler is fixed by a hash of its expression (so a problem is always asked the same way);
the base model's pretraining draws a fresh filler per example.

Each line of a demonstration is one operation, evaluated left to right, and the answer is in the last `\boxed{}`,
which is where the project's math-verify reward looks for it. Difficulty is the number of operations:

    difficulty 1 (easy):  `a±b`,    1 line,  e.g. "37+8=..."     -> "37+8=45\n\boxed{45}"
    difficulty 2 (hard):  `a±b±c`,  2 lines, e.g. "37+8-19=..."  -> "37+8=45\n45-19=26\n\boxed{26}"

The first operand and every intermediate result lie in `[0, max_value]`, every later operand in `[1, max_step]`,
and no result is negative. So each line of a hard demonstration is an easy problem of exactly the pretrained kind
(same operand ranges): what a hard problem adds is only the format, a second line that carries the first line's
result on. That is the paper's premise in miniature: the base model has every skill a hard problem needs but never
samples the two-line solution, so RL on hard prompts has no correct rollout to learn from, while a demonstration
shows the missing behaviour.

[`TaskSpec`] holds a task's operations and ranges. `>` (keep the larger) and `<` (keep the smaller) are defined too,
for a second skill, but they do not make a task with the paper's premise: a chain of them stopped after its first
line is still right whenever the second line keeps the value, and the base answered 21.5% of the hard comparison
problems that way (greedy, 400 held-out), above the 5% a hard problem must stay under before training.

Every problem belongs to one split, fixed by a hash of its expression: one in five is held out (reported), one in
five is the validation split (for choosing settings), the rest are training problems. No training set (of any seed,
size or difficulty, including the base model's pretraining data) shares a problem with the validation or held-out
sets.
"""

import hashlib
import math
import random
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..evaluation.backends import SamplingConfig, TransformersBackend
from ..evaluation.benchmarks import MATH, Problem
from ..evaluation.grading import grade_completions
from ..evaluation.metrics import pass_at_k


EASY_DIFFICULTY = 1
HARD_DIFFICULTY = 2
MAX_FILLER_LETTERS = 24

# What each operation symbol computes.
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, ">": max, "<": min}


@dataclass(frozen=True)
class TaskSpec:
    """
    A chain task: which operations its lines use and the ranges of its numbers.

    Args:
        operations (`str`, *optional*, defaults to `"+-"`):
            Operation symbols of `OPERATIONS`, each drawn with equal probability where its result is in range.
        max_value (`int`, *optional*, defaults to `59`):
            Largest first operand and intermediate result.
        max_step (`int`, *optional*, defaults to `19`):
            Largest later operand (later operands are at least 1).
    """

    operations: str = "+-"
    max_value: int = 59
    max_step: int = 19

    def __post_init__(self):
        unknown = sorted(set(self.operations) - set(OPERATIONS))
        if not self.operations or unknown:
            raise ValueError(f"operations must be symbols of {''.join(OPERATIONS)}, got {self.operations!r}")
        if self.max_value < 1 or self.max_step < 1:
            raise ValueError(f"max_value and max_step must be at least 1, got {self.max_value} and {self.max_step}")

    def sample_problem(self, rng: random.Random, difficulty: int = 1) -> "ChainProblem":
        """One problem with `difficulty` operations (see [`sample_problem`])."""
        return sample_problem(rng, difficulty, self)

    def pretraining_example(self, rng: random.Random, line_completion: bool) -> tuple[str, str, str] | None:
        """
        One pretraining example of the base model as `(question, completion_prefix, target)`, with a fresh filler:
        an easy problem in full, or a line completion, the second line of a two-step chain given up to its `=` after
        the first line answered (`37+8=kq` -> `37+8=45\n45-19=` + `26\n\boxed{26}`). None when the draw touches a
        problem outside the training split (the caller draws again).
        """
        if line_completion:
            # The second line of a hard training problem whose first line is an easy training problem: the hard
            # problem itself is never asked.
            chain = sample_problem(rng, HARD_DIFFICULTY, self)
            first_line, second_line, _ = chain.demonstration.split("\n")
            first_expression = first_line.split("=")[0]
            if split_of(chain.expression) != TRAIN_SPLIT or split_of(first_expression) != TRAIN_SPLIT:
                return None
            second_start, value = second_line.split("=")
            return (
                render_question(first_expression, rng),
                f"{first_line}\n{second_start}=",
                f"{value}\n\\boxed{{{value}}}",
            )
        problem = sample_problem(rng, EASY_DIFFICULTY, self)
        if split_of(problem.expression) != TRAIN_SPLIT:
            return None
        return render_question(problem.expression, rng), "", problem.demonstration


# The built-in task: additions and subtractions.
ARITHMETIC = TaskSpec("+-", max_value=59, max_step=19)

TRAIN_SPLIT, VALIDATION_SPLIT, HELD_OUT_SPLIT = "train", "validation", "held_out"
SPLITS = (TRAIN_SPLIT, VALIDATION_SPLIT, HELD_OUT_SPLIT)
# A problem's hash bucket modulo 5: bucket 0 is held out, bucket 1 is validation, buckets 2-4 are training. The
# easy level has ~2,000 distinct problems with the default ranges, so each of the two small splits holds ~400.
_SPLIT_MODULUS = 5
_SPLIT_OF_BUCKET = {0: HELD_OUT_SPLIT, 1: VALIDATION_SPLIT}

# The held-out and validation sets are drawn with this seed unless the caller picks another, so runs with different
# training seeds are evaluated on the same problems.
DEFAULT_EVAL_SEED = 1234

# Rejection sampling gives up after this many draws per requested problem, so asking for more distinct evaluation
# problems than exist fails loudly instead of looping forever.
_MAX_DRAWS_PER_PROBLEM = 1000


@dataclass(frozen=True)
class ChainProblem:
    """
    One problem of a built-in task: a chain of steps, one demonstration line each.

    Args:
        expression (`str`):
            What the problem asks, without its filler, e.g. `"37+8-19"`; its hash fixes the split.
        question (`str`):
            The user prompt: the expression, `=` and the problem's filler, e.g. `"37+8-19=kqzv"`.
        demonstration (`str`):
            The worked solution: one line per operation, then the boxed answer.
        answer (`int`):
            The value of the expression.
        difficulty (`int`):
            The number of operations.
    """

    expression: str
    question: str
    demonstration: str
    answer: int
    difficulty: int


class ChainTask(Protocol):
    """What a built-in task provides ([`TaskSpec`] here, `RearrangeTask` and `LookupTask` in their modules)."""

    def sample_problem(self, rng: random.Random, difficulty: int) -> ChainProblem:
        """One problem of `difficulty` steps, a deterministic function of `rng`'s state."""

    def pretraining_example(self, rng: random.Random, line_completion: bool) -> tuple[str, str, str] | None:
        """One base-model pretraining example `(question, completion_prefix, target)`, None to draw again."""


def _digest(text: str) -> int:
    """A stable hash (not Python's salted `hash`), so splits and fillers are the same on every machine."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_of(expression: str) -> str:
    """The split (`"train"`, `"validation"` or `"held_out"`) that `expression` belongs to."""
    return _SPLIT_OF_BUCKET.get(_digest(expression) % _SPLIT_MODULUS, TRAIN_SPLIT)


def is_held_out(expression: str) -> bool:
    """Whether `expression` belongs to the fixed held-out split."""
    return split_of(expression) == HELD_OUT_SPLIT


def easy_training_example(task: ChainTask, rng: random.Random) -> tuple[str, str, str] | None:
    """An easy training problem in full as a pretraining example `(question, "", demonstration)`; None off the split."""
    problem = task.sample_problem(rng, EASY_DIFFICULTY)
    if split_of(problem.expression) != TRAIN_SPLIT:
        return None
    return problem.question, "", problem.demonstration


def line_completion_example(
    chain: ChainProblem, first_step: ChainProblem, separator: str
) -> tuple[str, str, str] | None:
    """
    The pretraining example that finishes the second line of the two-step `chain`, asked as its easy `first_step`:
    `(first_step.question, first line + second line up to its separator, rest of the second line + boxed answer)`.
    None when either problem is outside the training split: the hard problem itself is never asked, and neither is a
    validation or held-out question.
    """
    if split_of(chain.expression) != TRAIN_SPLIT or split_of(first_step.expression) != TRAIN_SPLIT:
        return None
    first_line, second_line, _ = chain.demonstration.split("\n")
    second_start, value = second_line.split(separator)
    return first_step.question, f"{first_line}\n{second_start}{separator}", f"{value}\n\\boxed{{{value}}}"


def render_question(expression: str, rng: random.Random | None = None) -> str:
    """
    The question of `expression`: the expression, `=`, then 0 to `MAX_FILLER_LETTERS` lowercase letters, drawn from
    `rng`, or, without one, fixed by a hash of the expression.
    """
    rng = rng or random.Random(f"filler-{_digest(expression)}")
    filler = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(0, MAX_FILLER_LETTERS)))
    return f"{expression}={filler}"


def sample_problem(rng: random.Random, difficulty: int = EASY_DIFFICULTY, task: TaskSpec = ARITHMETIC) -> ChainProblem:
    """
    Draw one problem with `difficulty` operations of `task`: the first operand uniform in `[0, task.max_value]`, each
    later operation and operand (in `[1, task.max_step]`) redrawn until every intermediate result lies in
    `[0, task.max_value]` and the final one is not negative.

    Args:
        rng (`random.Random`):
            Source of randomness; the problem is a deterministic function of its state.
        difficulty (`int`, *optional*, defaults to `1`):
            Number of operations, i.e. reasoning steps.
        task ([`TaskSpec`], *optional*, defaults to `ARITHMETIC`):
            Operations and ranges.
    """
    if difficulty < 1:
        raise ValueError(f"difficulty must be a positive number of operations, got {difficulty}")
    value = rng.randint(0, task.max_value)
    expression = str(value)
    steps = []
    for index in range(difficulty):
        # Keeping intermediate results in [0, max_value] makes every line an easy problem of the pretrained range.
        limit = task.max_value if index < difficulty - 1 else task.max_value + task.max_step
        while True:
            op = rng.choice(task.operations)
            operand = rng.randint(1, task.max_step)
            result = OPERATIONS[op](value, operand)
            if 0 <= result <= limit:
                break
        steps.append(f"{value}{op}{operand}={result}")
        expression += f"{op}{operand}"
        value = result
    demonstration = "\n".join(steps) + f"\n\\boxed{{{value}}}"
    return ChainProblem(
        expression=expression,
        question=render_question(expression),
        demonstration=demonstration,
        answer=value,
        difficulty=difficulty,
    )


def _normalize_mixture(difficulty: int | Mapping[int, float]) -> list[tuple[int, float]]:
    if isinstance(difficulty, int):
        return [(difficulty, 1.0)]
    items = sorted((int(level), float(weight)) for level, weight in difficulty.items())
    total = sum(weight for _, weight in items)
    if not items or total <= 0 or any(weight < 0 for _, weight in items):
        raise ValueError(f"difficulty mixture needs non-negative weights with a positive sum, got {difficulty}")
    return [(level, weight / total) for level, weight in items]


def _split_counts(num_problems: int, mixture: list[tuple[int, float]]) -> list[tuple[int, int]]:
    """Largest-remainder rounding, so the counts sum to `num_problems` and follow the fractions as closely as possible."""
    exact = [(level, weight * num_problems) for level, weight in mixture]
    counts = {level: math.floor(x) for level, x in exact}
    remainder = num_problems - sum(counts.values())
    by_remainder = sorted(exact, key=lambda item: (math.floor(item[1]) - item[1], item[0]))
    for level, _ in by_remainder[:remainder]:
        counts[level] += 1
    return [(level, counts[level]) for level, _ in mixture]


def generate_problems(
    num_problems: int,
    difficulty: int | Mapping[int, float] = EASY_DIFFICULTY,
    seed: int = 0,
    split: str = TRAIN_SPLIT,
    task: ChainTask = ARITHMETIC,
) -> list[ChainProblem]:
    """
    Generate problems of one split, deterministically for `seed`.

    Args:
        num_problems (`int`):
            Number of problems.
        difficulty (`int` or `Mapping[int, float]`, *optional*, defaults to `1`):
            Number of operations, or a mixture `{difficulty: fraction}` such as `{1: 0.5, 2: 0.5}`. Fractions are
            normalised and turned into exact counts; problems of all levels are then shuffled together.
        seed (`int`, *optional*, defaults to `0`):
            Random seed.
        split (`str`, *optional*, defaults to `"train"`):
            `"train"`, `"validation"` or `"held_out"`. Validation and held-out problems are distinct from each other
            (repeats would weight some problems twice in an accuracy); training problems are i.i.d. draws and may
            repeat when the level has few distinct problems.
        task ([`ChainTask`], *optional*, defaults to `ARITHMETIC`):
            The task: a [`TaskSpec`] (operations and ranges), `rearrange_task.REARRANGE` or `lookup_task.LOOKUP`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"arithmetic-{seed}-{split}")
    distinct = split != TRAIN_SPLIT
    problems = []
    for level, count in _split_counts(num_problems, _normalize_mixture(difficulty)):
        seen = set()
        taken = 0
        for _ in range(count * _MAX_DRAWS_PER_PROBLEM):
            if taken == count:
                break
            problem = task.sample_problem(rng, level)
            if split_of(problem.expression) != split or (distinct and problem.expression in seen):
                continue
            seen.add(problem.expression)
            problems.append(problem)
            taken += 1
        if taken < count:
            raise ValueError(
                f"could only draw {taken} of {count} distinct {split} problems of difficulty {level} with "
                f"{task}; ask for fewer or widen the ranges"
            )
    rng.shuffle(problems)
    return problems


def problems_to_dataset(problems: list[ChainProblem]) -> Dataset:
    """
    Convert problems to a conversational `Dataset` with columns `prompt` (a single user message), `demonstration`
    (the worked solution, the SFT target), `solution` (the answer as a string, for the reward) and `difficulty`.
    """
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p.question}] for p in problems],
            "demonstration": [p.demonstration for p in problems],
            "solution": [str(p.answer) for p in problems],
            "difficulty": [p.difficulty for p in problems],
        }
    )


def make_arithmetic_datasets(
    num_train: int,
    num_eval: int,
    difficulty: int | Mapping[int, float] = EASY_DIFFICULTY,
    seed: int = 0,
    eval_seed: int = DEFAULT_EVAL_SEED,
    eval_split: str = HELD_OUT_SPLIT,
    task: ChainTask = ARITHMETIC,
) -> tuple[Dataset, Dataset]:
    """
    Build the training and evaluation datasets of the arithmetic task.

    Args:
        num_train (`int`):
            Number of training problems.
        num_eval (`int`):
            Number of evaluation problems, all distinct.
        difficulty (`int` or `Mapping[int, float]`, *optional*, defaults to `1`):
            Number of operations, or a mixture such as `{EASY_DIFFICULTY: 0.5, HARD_DIFFICULTY: 0.5}`. The evaluation
            set follows the same mixture; its `difficulty` column lets accuracy be reported per level.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the training set.
        eval_seed (`int`, *optional*, defaults to `1234`):
            Seed of the evaluation set, fixed by default so that every training seed is evaluated on the same
            problems.
        eval_split (`str`, *optional*, defaults to `"held_out"`):
            `"held_out"` to report, `"validation"` to choose settings on.
        task ([`ChainTask`], *optional*, defaults to `ARITHMETIC`):
            The task: a [`TaskSpec`] (operations and ranges), `rearrange_task.REARRANGE` or `lookup_task.LOOKUP`.

    Returns:
        `tuple[Dataset, Dataset]`: the training and evaluation datasets, with columns `prompt`, `demonstration`,
        `solution` and `difficulty`. No problem is in both.

    Example:

    ```python
    >>> train, test = make_arithmetic_datasets(1000, 100, {EASY_DIFFICULTY: 0.5, HARD_DIFFICULTY: 0.5})
    >>> train[0]["prompt"]
    [{'role': 'user', 'content': '...'}]
    ```
    """
    if eval_split == TRAIN_SPLIT:
        raise ValueError("eval_split must be 'held_out' or 'validation': training problems are not for evaluation")
    train = generate_problems(num_train, difficulty, seed=seed, split=TRAIN_SPLIT, task=task)
    evaluation = generate_problems(num_eval, difficulty, seed=eval_seed, split=eval_split, task=task)
    return problems_to_dataset(train), problems_to_dataset(evaluation)


@dataclass
class EvalResult:
    """
    Held-out accuracy of a model.

    Args:
        accuracy (`float`):
            Fraction of all sampled completions that are correct (with one greedy sample, the greedy accuracy; with
            `n` samples, the unbiased estimate of pass@1).
        correct_counts (`list[int]`):
            Number of correct completions per problem, in dataset order.
        num_samples (`int`):
            Completions per problem.
        completions (`list[list[str]]`):
            The decoded completions per problem.
    """

    accuracy: float
    correct_counts: list[int]
    num_samples: int
    completions: list[list[str]] = field(repr=False)

    def pass_at_k(self, k: int) -> float:
        """Unbiased pass@k (Chen et al., 2021), averaged over problems; needs `1 <= k <= num_samples`."""
        scores = [pass_at_k(self.num_samples, count, k) for count in self.correct_counts]
        return sum(scores) / len(scores) if scores else 0.0

    def accuracy_by(self, groups: list) -> dict:
        """Accuracy per group label (e.g. the dataset's `difficulty` column), in the order the labels first appear."""
        totals: dict = {}
        for label, count in zip(groups, self.correct_counts, strict=True):
            correct, seen = totals.get(label, (0, 0))
            totals[label] = (correct + count, seen + self.num_samples)
        return {label: correct / seen for label, (correct, seen) in totals.items()}


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, str]]) -> list[int]:
    """
    Token ids of a conversational prompt as the model is asked it: the chat template with the generation prompt,
    rendered then tokenized without added special tokens (the template has its own), as the trainers build prompts.
    """
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def evaluate_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    num_samples: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> EvalResult:
    """
    Held-out accuracy of `model` on a dataset with `prompt` and `solution` columns, through the evaluation package:
    generated by its [`~hpt_trl.evaluation.TransformersBackend`] (in batches, left padding) and graded by its
    [`~hpt_trl.evaluation.grade_completions`] (the last `\\boxed{}` answer, math-verified as the training reward does).

    Args:
        model ([`~transformers.PreTrainedModel`]):
            Causal LM to evaluate; its train/eval mode is restored afterwards.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer with a chat template.
        dataset ([`~datasets.Dataset`]):
            Dataset from [`make_arithmetic_datasets`] (or any with conversational `prompt` and `solution` columns).
        num_samples (`int`, *optional*, defaults to `1`):
            Completions per problem; more than one needs `do_sample=True`.
        do_sample (`bool`, *optional*, defaults to `False`):
            Sample with `temperature` instead of decoding greedily.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature.
        max_new_tokens (`int` or `None`, *optional*, defaults to `None`):
            Generation budget. `None` allows the longest demonstration in `dataset` plus a margin (or 64 tokens when
            there is no `demonstration` column), enough for a correct answer without paying for long rambling.
        batch_size (`int`, *optional*, defaults to `64`):
            Sequences generated at once.
        seed (`int`, *optional*, defaults to `0`):
            Sampling seed; problem `i` gets `seed + i`, and the backend draws a batch from its first problem's seed.
            The caller's global RNG is left untouched.

    Returns:
        [`EvalResult`]: accuracy, per-problem correct counts (for pass@k) and the completions.
    """
    if num_samples > 1 and not do_sample:
        raise ValueError(
            "greedy decoding gives the same completion every time; set do_sample=True for num_samples > 1"
        )
    if max_new_tokens is None:
        if "demonstration" in dataset.column_names:
            lengths = [
                len(ids) for ids in tokenizer(list(dataset["demonstration"]), add_special_tokens=False)["input_ids"]
            ]
            max_new_tokens = max(lengths, default=0) + 16
        else:
            max_new_tokens = 64
    # Pure temperature sampling, TRL's GRPOConfig defaults (no top-k/top-p truncation), so sampled accuracy measures
    # the distribution RL rollouts are drawn from. Temperature 0 is the backend's greedy decoding.
    sampling = SamplingConfig(
        n=num_samples,
        temperature=temperature if do_sample else 0.0,
        top_p=1.0,
        top_k=-1,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    backend = TransformersBackend(model, tokenizer)
    prompts = [prompt_ids(tokenizer, prompt) for prompt in dataset["prompt"]]
    completions = []
    # Batches hold `batch_size` sequences, not prompts, so memory does not grow with `num_samples`.
    prompts_per_batch = max(1, batch_size // num_samples)
    for start in range(0, len(prompts), prompts_per_batch):
        batch = prompts[start : start + prompts_per_batch]
        # One seed per problem (seed + its index), as the evaluation harness seeds them.
        seeds = [seed + index for index in range(start, start + len(batch))]
        generations = backend.generate(batch, sampling, seeds=seeds)
        completions.extend([generation.text for generation in group] for group in generations)
    problems = [
        Problem(
            benchmark="arithmetic",
            index=index,
            problem_id=str(index),
            prompt=prompt[-1]["content"],
            answer=solution,
            kind=MATH,
        )
        for index, (prompt, solution) in enumerate(zip(dataset["prompt"], dataset["solution"], strict=True))
    ]
    correct_counts = [
        sum(correct for correct, _ in grade_completions(problem, group))
        for problem, group in zip(problems, completions, strict=True)
    ]
    total = num_samples * len(correct_counts)
    accuracy = sum(correct_counts) / total if total else 0.0
    return EvalResult(
        accuracy=accuracy, correct_counts=correct_counts, num_samples=num_samples, completions=completions
    )
