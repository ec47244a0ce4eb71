"""
Grading of completions: math answers through the project's verifier, multiple choice through the chosen label.

Math answers are graded one of two ways (`grading`):

- `"boxed_only"`: the content of the last `\\boxed{}` must be equivalent to the gold answer: the training reward
  (`hpt_trl.rewards.accuracy_reward`), which the authors' in-training validation uses too.
- `"with_fallbacks"`: the grading of DeepMath's `uni_eval.py`, which the HPT authors' README points to for the paper's
  table. A completion is correct when any of three checks passes, tried in order: the last `\\boxed{}` answer; else
  the text after "The answer is: " on the last line (`re.search(r"The answer is: (.+)$", completion)`, as
  `uni_eval.py`); else math-verify over the whole completion (`math_verify.parse(completion)`, which finds the answer
  itself). A wrong boxed answer still gets the two fallbacks, as in `uni_eval.py`. Each check uses this project's
  verifier (normalised comparison, then math-verify, time-bounded in helper processes), not DeepMath's own
  comparison code.

Multiple-choice answers (GPQA-diamond, ARC-c) are graded by the chosen label (`extract_choice`) under both.
"""

import re

from .benchmarks import MULTIPLE_CHOICE, Problem


BOXED_ONLY = "boxed_only"
WITH_FALLBACKS = "with_fallbacks"
GRADINGS = (BOXED_ONLY, WITH_FALLBACKS)

# Which check found a correct answer, recorded per completion (`matched_by` in records.jsonl).
MATCHED_BOXED = "boxed"
MATCHED_ANSWER_IS = "answer_is"
MATCHED_WHOLE_TEXT = "whole_text"
MATCHED_CHOICE = "choice"

# uni_eval.py's second check. No re.MULTILINE: `.` stops at a line break and `$` is the end of the text (or a last
# newline), so only a statement on the last line counts.
_ANSWER_IS_RE = re.compile(r"The answer is: (.+)$")


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
    from hpt_trl.answer_extraction import extract_boxed_answer

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


def extract_answer_is(completion: str) -> str | None:
    """
    The answer stated as "The answer is: X" on the last line of a completion (DeepMath `uni_eval.py`'s second check).

    Args:
        completion (`str`):
            The model's response.

    Returns:
        `str` or `None`: `X`, stripped, or `None` when the last line states no answer that way.
    """
    if not isinstance(completion, str):
        return None
    match = _ANSWER_IS_RE.search(completion)
    if match is None:
        return None
    answer = match.group(1).strip()
    return answer or None


def _check_grading(grading: str) -> None:
    if grading not in GRADINGS:
        raise ValueError(f"Unknown --grading {grading!r}; choose one of {', '.join(GRADINGS)}.")


def grade_with_checks(
    problem: Problem, completions: list[str], timeout_seconds: float = 5.0, grading: str = BOXED_ONLY
) -> list[tuple[bool, str | None, str | None]]:
    """
    Grade a problem's completions and tell which check accepted each (see the module docstring for `grading`).

    Args:
        problem (`Problem`):
            The problem.
        completions (`list[str]`):
            The model's responses.
        timeout_seconds (`float`, *optional*, defaults to `5.0`):
            Time limit of one math verification; a check that runs out counts as wrong.
        grading (`str`, *optional*, defaults to `"boxed_only"`):
            `"boxed_only"` or `"with_fallbacks"` (math problems only).

    Returns:
        `list[tuple[bool, str | None, str | None]]`: Per completion, whether it is correct; the extracted answer (the
        boxed content, else with `"with_fallbacks"` the "The answer is:" text; or the chosen label); and the check
        that accepted it (`"boxed"`, `"answer_is"`, `"whole_text"`, `"choice"`), `None` when it is wrong.
    """
    _check_grading(grading)
    if problem.kind == MULTIPLE_CHOICE:
        gold = problem.answer.upper()
        graded = []
        for completion in completions:
            choice = extract_choice(completion)
            ok = choice is not None and choice == gold
            graded.append((ok, choice, MATCHED_CHOICE if ok else None))
        return graded
    from hpt_trl.rewards import accuracy_reward
    from hpt_trl.verification import verify_extracted_answers, verify_whole_texts

    golds = [problem.answer] * len(completions)
    boxed = [_boxed_content(completion) for completion in completions]
    rewards = accuracy_reward(completions, golds, timeout_seconds=timeout_seconds)
    matched = [MATCHED_BOXED if reward == 1.0 else None for reward in rewards]
    extracted = list(boxed)
    if grading == WITH_FALLBACKS:
        stated = [extract_answer_is(completion) for completion in completions]
        extracted = [b if b is not None else a for b, a in zip(boxed, stated)]
        left = [i for i, m in enumerate(matched) if m is None and stated[i] is not None]
        verdicts = verify_extracted_answers([stated[i] for i in left], [problem.answer] * len(left), timeout_seconds)
        for i, ok in zip(left, verdicts):
            if ok:
                matched[i] = MATCHED_ANSWER_IS
        left = [i for i, m in enumerate(matched) if m is None]
        verdicts = verify_whole_texts([completions[i] for i in left], [problem.answer] * len(left), timeout_seconds)
        for i, ok in zip(left, verdicts):
            if ok:
                matched[i] = MATCHED_WHOLE_TEXT
        # The answer that was accepted, when the second check accepted one over a (wrong) boxed answer.
        extracted = [a if m == MATCHED_ANSWER_IS else e for a, m, e in zip(stated, matched, extracted)]
    return [(m is not None, e, m) for m, e in zip(matched, extracted)]


def grade_completions(
    problem: Problem, completions: list[str], timeout_seconds: float = 5.0, grading: str = BOXED_ONLY
) -> list[tuple[bool, str | None]]:
    """
    Grade a problem's sampled completions against its gold answer.

    Math answers go through the project's verifier (`hpt_trl.rewards`: with `grading="boxed_only"`, the content of the
    last `\\boxed{}` must be equivalent to the gold answer; `"with_fallbacks"` adds the two fallbacks of the authors'
    evaluation, see the module docstring; the checks of one call run in parallel helper processes, each under
    `timeout_seconds`). Multiple-choice answers are graded by the label `extract_choice` finds.

    Args:
        problem (`Problem`):
            The problem.
        completions (`list[str]`):
            The model's responses.
        timeout_seconds (`float`, *optional*, defaults to `5.0`):
            Time limit of one math verification; a check that runs out counts as wrong.
        grading (`str`, *optional*, defaults to `"boxed_only"`):
            `"boxed_only"` (the training reward) or `"with_fallbacks"` (the paper's evaluation).

    Returns:
        `list[tuple[bool, str | None]]`: Per completion, whether it is correct and the answer that was extracted (the
        boxed content, or the "The answer is:" text, or the chosen label), for the records.
    """
    return [(ok, extracted) for ok, extracted, _ in grade_with_checks(problem, completions, timeout_seconds, grading)]


def grade_completion(
    problem: Problem, completion: str, timeout_seconds: float = 5.0, grading: str = BOXED_ONLY
) -> tuple[bool, str | None]:
    """
    Grade one completion against a problem's gold answer (see `grade_completions`).

    Args:
        problem (`Problem`):
            The problem.
        completion (`str`):
            The model's response.
        timeout_seconds (`float`, *optional*, defaults to `5.0`):
            Time limit of the math verification.
        grading (`str`, *optional*, defaults to `"boxed_only"`):
            `"boxed_only"` or `"with_fallbacks"`.

    Returns:
        `tuple[bool, str | None]`: Whether it is correct, and the extracted answer.
    """
    return grade_completions(problem, [completion], timeout_seconds, grading)[0]
