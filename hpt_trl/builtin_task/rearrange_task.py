r"""The comparison's second built-in task, of another skill: rearranging six digits by named moves.

The arithmetic task's skill is computing (two-digit addition with carries). This one's is copying symbols into new
positions: the question gives one or more moves and a string of digits, and each line of a demonstration applies one
move to the string of the line before (the question's string for the first line):

    question:       "RS|365812"                              (the moves in order, then the string)
    demonstration:  "R:218563\nS:185632\n\boxed{185632}"
    solution:       "185632"

The moves: `R` reverses the string, `S` rotates it left by one, `W` swaps the digits of each pair. Difficulty is the
number of moves:

    difficulty 1 (easy):  "R|365812",   1 line,  "R:218563\n\boxed{218563}"
    difficulty 2 (hard):  "RS|365812",  2 lines, as above

The digits are six different ones of 1-9 (a zero would grade `048` equal to `48`; a repeated digit would let a wrong
move give the right string), and the two moves of a chain differ (`RR` and `WW` are the identity). No two-move chain
equals a single move, so a hard problem stopped after its first line is always wrong. The moves come first, so the
string ends every question and the first move starts it, at the places an easy question has them: the first line of a
hard demonstration is an easy problem, and the second applies a move to the line before, which the base model is
pretrained on (easy questions, and completing a second line given its move, as `base_model` does for arithmetic). What
the base never does is write a second line itself; RL on a hard prompt then has no correct rollout, while a
demonstration shows the missing behaviour: the move letter to copy from the question.

The base with `base_model`'s default settings (shipped in `pretrained_base_rearrange/`) stopped at step 650 of 1000
(validation 0.84) and solves 83% of the held-out easy problems and none of the hard ones (greedy, 200 each). Two
earlier layouts were measured and dropped: four digits with repeats allowed were learned too fast for the stop rule
(step 200, easy 0.86), and 6% of the hard problems came out right by coincidence; with the string first and each line
written out (`365812|RS` -> `R(365812)=218563\nS(218563)=185632`, 49 tokens, over the demo recipe's 40), SFT at 1e-3
taught no hard problem in 300 steps (validation hard 0.01): its second lines miscopied the six digits they start
with, which the base had only ever been given.

Problems belong to the splits of `arithmetic_task` (a hash of the question), and are drawn, turned into datasets and
graded by its functions: pass `task=REARRANGE` to them.
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


# What each move does to a string.
MOVES = {
    "R": lambda text: text[::-1],
    "S": lambda text: text[1:] + text[:1],
    "W": lambda text: "".join(text[i : i + 2][::-1] for i in range(0, len(text), 2)),
}


@dataclass(frozen=True)
class RearrangeTask:
    """
    A rearrangement task: strings of `length` digits (1-9), rearranged by one or more moves of `moves`.

    Args:
        length (`int`, *optional*, defaults to `6`):
            Digits in the question's string, all different (2 to 9).
        moves (`str`, *optional*, defaults to `"RSW"`):
            Move letters of `MOVES`; consecutive moves of a chain differ.
    """

    length: int = 6
    moves: str = "RSW"

    def __post_init__(self):
        if not 2 <= self.length <= 9:
            raise ValueError(f"length must be between 2 and 9 (distinct digits), got {self.length}")
        unknown = sorted(set(self.moves) - set(MOVES))
        if len(set(self.moves)) < 2 or unknown:
            raise ValueError(f"moves must be at least two distinct letters of {''.join(MOVES)}, got {self.moves!r}")

    def _problem(self, text: str, moves: str) -> ChainProblem:
        question = f"{moves}|{text}"
        lines = []
        for move in moves:
            text = MOVES[move](text)
            lines.append(f"{move}:{text}")
        return ChainProblem(
            expression=question,
            question=question,
            demonstration="\n".join(lines) + f"\n\\boxed{{{text}}}",
            answer=int(text),
            difficulty=len(moves),
        )

    def _draw(self, rng: random.Random, difficulty: int) -> tuple[str, str]:
        text = "".join(rng.sample("123456789", self.length))
        moves = [rng.choice(self.moves)]
        for _ in range(difficulty - 1):
            moves.append(rng.choice([move for move in self.moves if move != moves[-1]]))
        return text, "".join(moves)

    def sample_problem(self, rng: random.Random, difficulty: int = EASY_DIFFICULTY) -> ChainProblem:
        """One problem: a fresh string and `difficulty` moves."""
        if difficulty < 1:
            raise ValueError(f"difficulty must be a positive number of moves, got {difficulty}")
        return self._problem(*self._draw(rng, difficulty))

    def pretraining_example(self, rng: random.Random, line_completion: bool) -> tuple[str, str, str] | None:
        """
        One pretraining example of the base model as `(question, completion_prefix, target)`: an easy problem in
        full, or a line completion, the easy question of a two-move chain's first move with the completion given up
        to the second line's move (`R|365812` -> `R:218563\\nS:` + `185632\\n\\boxed{185632}`). None when the draw
        touches a problem outside the training split (the caller draws again).
        """
        if not line_completion:
            return easy_training_example(self, rng)
        text, moves = self._draw(rng, HARD_DIFFICULTY)
        return line_completion_example(self._problem(text, moves), self._problem(text, moves[0]), separator=":")


# The built-in rearrangement task: six different digits, three moves.
REARRANGE = RearrangeTask()
