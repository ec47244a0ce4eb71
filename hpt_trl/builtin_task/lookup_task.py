r"""A candidate task of another skill, not adopted: following pointers through a table given in the question.

The arithmetic task's skill is computing (two-digit addition with carries). This one's is in-context retrieval: the
question holds a table that maps each digit to another, and asks where a digit leads after one or more steps:

    question:       "4>1,0>7,9>3,1>0,...,3>5|4>>"       (the table, then the start digit and one `>` per step)
    demonstration:  "4>1\n1>0\n\boxed{0}"
    solution:       "0"

Each line of a demonstration is one step, a table entry copied from the question, and the answer is in the last
`\boxed{}`. Difficulty is the number of steps:

    difficulty 1 (easy):  `|4>`,   1 line,  "4>1\n\boxed{1}"
    difficulty 2 (hard):  `|4>>`,  2 lines, "4>1\n1>0\n\boxed{0}"

The table is a random permutation of the digits with no fixed point, written in a random order, so an entry is found
by its key, not by its position, and a line never maps a digit to itself: a hard problem stopped after its first line
is always wrong. Every line of a hard demonstration is an easy problem of the same table, so the premise is the
arithmetic task's in another skill: the base model (pretrained on easy questions and on completing a second line
given its start, as `base_model` does for arithmetic) has every step a hard problem needs but never writes the second
line itself, so RL on a hard prompt has no correct rollout while a demonstration shows the missing behaviour.

Problems belong to the splits of `arithmetic_task` (a hash of the question), and are drawn, turned into datasets and
graded by its functions: pass `task=LOOKUP` to them.

**Not yet a task with the paper's premise**: the default base recipe does not learn the skill. Measured (one thread,
1000 pretraining steps of batch 64, greedy on 200 held-out problems per level): with 10 digits the base stayed at
chance, easy 0.09 and hard 0.095 (validation 0.11 at the end, loss flat at 0.475 from step ~265), writing `3>3` for
every question; at learning rate 1e-3 the loss was still 0.478 at step 660; with 5 digits easy 0.23 and hard 0.18
(chance 1/4); with half of the examples taken from the arithmetic task, the base learned to copy the start digit and
the boxed answer (loss 0 on those tokens) but not to find the entry (easy 0.10, hard 0.075). The missing piece is
retrieval by a two-token match (`6>` among digits that each stand twice in the table), which the tiny model did not
find in 1000 steps. `benchmarks/compare_methods.py --task builtin:lookup` prints these premise checks as FAIL. The
comparison's second task is `rearrange_task`, whose skill (copying digits into new positions) the same base recipe
learns.
"""

import random
from dataclasses import dataclass

from .arithmetic_task import (
    EASY_DIFFICULTY,
    HARD_DIFFICULTY,
    ChainProblem,
    easy_training_example,
    line_completion_example,
)


@dataclass(frozen=True)
class LookupTask:
    """
    A pointer-following task: a table over `num_symbols` digits, asked one or more steps from a start digit.

    Args:
        num_symbols (`int`, *optional*, defaults to `10`):
            The table maps each of the digits `0 .. num_symbols - 1` to another one (2 to 10).
    """

    num_symbols: int = 10

    def __post_init__(self):
        if not 2 <= self.num_symbols <= 10:
            raise ValueError(f"num_symbols must be between 2 and 10 (single digits), got {self.num_symbols}")

    def _table(self, rng: random.Random) -> dict[int, int]:
        """A permutation with no fixed point (redrawn until it has none), its entries in a random order."""
        symbols = list(range(self.num_symbols))
        while True:
            targets = rng.sample(symbols, len(symbols))
            if all(key != target for key, target in zip(symbols, targets, strict=True)):
                break
        order = rng.sample(symbols, len(symbols))
        return {key: targets[key] for key in order}

    def _problem(self, table: dict[int, int], start: int, difficulty: int) -> ChainProblem:
        question = ",".join(f"{key}>{value}" for key, value in table.items()) + f"|{start}" + ">" * difficulty
        lines, value = [], start
        for _ in range(difficulty):
            lines.append(f"{value}>{table[value]}")
            value = table[value]
        return ChainProblem(
            expression=question,
            question=question,
            demonstration="\n".join(lines) + f"\n\\boxed{{{value}}}",
            answer=value,
            difficulty=difficulty,
        )

    def sample_problem(self, rng: random.Random, difficulty: int = EASY_DIFFICULTY) -> ChainProblem:
        """One problem: a fresh table and start digit, asked `difficulty` steps."""
        if difficulty < 1:
            raise ValueError(f"difficulty must be a positive number of steps, got {difficulty}")
        table = self._table(rng)
        return self._problem(table, rng.randrange(self.num_symbols), difficulty)

    def pretraining_example(self, rng: random.Random, line_completion: bool) -> tuple[str, str, str] | None:
        """
        One pretraining example of the base model as `(question, completion_prefix, target)`: an easy problem in
        full, or a line completion, the easy question of a two-step chain's first step with the completion given up
        to the second line's `>` (`...|4>` -> `4>1\\n1>` + `0\\n\\boxed{0}`). None when the draw touches a problem
        outside the training split (the caller draws again).
        """
        if not line_completion:
            return easy_training_example(self, rng)
        table = self._table(rng)
        start = rng.randrange(self.num_symbols)
        chain, first_step = self._problem(table, start, HARD_DIFFICULTY), self._problem(table, start, EASY_DIFFICULTY)
        return line_completion_example(chain, first_step, separator=">")


# The built-in lookup task: a permutation of the ten digits.
LOOKUP = LookupTask(num_symbols=10)
