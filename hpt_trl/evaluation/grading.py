"""Grading of completions: math answers through the project's verifier, multiple choice through the chosen label."""

import re

from .benchmarks import MULTIPLE_CHOICE, Problem


# Upper-case letters and digits: GPQA and most of ARC-c use A-D, a few ARC-c questions use 1-4. Lower-case letters are
# left out on purpose: GPQA questions enumerate statements as a), b), ... and then ask for an upper-case option.
_LABEL = r"[A-J1-9]"

# `\text{C}`, `\textbf{(C)}`, `\mathrm{C}` ... wrappers a model may put inside the box.
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|textit)\s*\{([^{}]*)\}")
# The box's content is a label, optionally in parentheses and optionally followed by the option's text.
_BOXED_LABEL_RE = re.compile(rf"^\(?\s*({_LABEL})\s*\)?(?:$|[\s.:)\-,])")
# Phrases that announce the final choice, e.g. "the answer is (C)", "Answer: C", "correct option is **B**". The key
# words ignore case, the label does not, so "the answer is a planet" is not read as A.
_PHRASE_RE = re.compile(
    r"(?i:answer(?:\s+choice)?|correct\s+(?:option|choice))(?:\s+is)?\s*:?\s*(?:\*\*|\$|\\\(|\\textbf\{|\()*\s*"
    rf"({_LABEL})\)?(?![A-Za-z0-9])"
)


def _boxed_content(completion: str) -> str | None:
    from hpt_trl.rewards import extract_boxed_answer

    return extract_boxed_answer(completion)


def extract_choice(completion: str) -> str | None:
    """
    Extract the option label a completion chose.

    The last `\\boxed{...}` wins when its content is a label (`\\boxed{C}`, `\\boxed{(C)}`, `\\boxed{\\text{C}}`,
    `\\boxed{C) some text}`); otherwise the last phrase such as "the answer is (C)" or "Answer: C".

    Args:
        completion (`str`):
            The model's response.

    Returns:
        `str` or `None`: The upper-case letter or digit, or `None` when no choice is found.
    """
    boxed = _boxed_content(completion)
    if boxed is not None:
        content = boxed.strip()
        for _ in range(2):
            content = _WRAPPER_RE.sub(r"\1", content).strip()
        match = _BOXED_LABEL_RE.match(content)
        if match is not None:
            return match.group(1)
    matches = list(_PHRASE_RE.finditer(completion))
    return matches[-1].group(1) if matches else None


def grade_completions(
    problem: Problem, completions: list[str], timeout_seconds: float = 5.0
) -> list[tuple[bool, str | None]]:
    """
    Grade a problem's sampled completions against its gold answer.

    Math answers go through the project's verifier (`hpt_trl.rewards`: the content of the last `\\boxed{}` must be
    equivalent to the gold answer; the checks of one call run in parallel helper processes, each under
    `timeout_seconds`). Multiple-choice answers are graded by the label `extract_choice` finds.

    Args:
        problem (`Problem`):
            The problem.
        completions (`list[str]`):
            The model's responses.
        timeout_seconds (`float`, *optional*, defaults to `5.0`):
            Time limit of one math verification; a check that runs out counts as wrong.

    Returns:
        `list[tuple[bool, str | None]]`: Per completion, whether it is correct and the answer that was extracted (the
        boxed content or the chosen label), for the records.
    """
    if problem.kind == MULTIPLE_CHOICE:
        gold = problem.answer.upper()
        choices = [extract_choice(completion) for completion in completions]
        return [(choice is not None and choice == gold, choice) for choice in choices]
    from hpt_trl.rewards import accuracy_reward

    rewards = accuracy_reward(completions, [problem.answer] * len(completions), timeout_seconds=timeout_seconds)
    return [(reward == 1.0, _boxed_content(completion)) for reward, completion in zip(rewards, completions)]


def grade_completion(problem: Problem, completion: str, timeout_seconds: float = 5.0) -> tuple[bool, str | None]:
    """
    Grade one completion against a problem's gold answer (see `grade_completions`).

    Args:
        problem (`Problem`):
            The problem.
        completion (`str`):
            The model's response.
        timeout_seconds (`float`, *optional*, defaults to `5.0`):
            Time limit of the math verification.

    Returns:
        `tuple[bool, str | None]`: Whether it is correct, and the extracted answer.
    """
    return grade_completions(problem, [completion], timeout_seconds)[0]
