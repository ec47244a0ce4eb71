# Copyright 2025 The hpt-trl authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Answer extraction and normalisation: the final answer of a completion (its last `\\boxed{...}`), gold answers
brought to one unboxed form, and the canonical string form that settles most comparisons without math-verify.

Pure string code (no SymPy, no processes), shared by the reward ([`~hpt_trl.rewards.accuracy_reward`]), the
time-bounded verifier (`hpt_trl.verification`) and the evaluation harness.
"""

import re
from decimal import Decimal, InvalidOperation


# Only the answer inside the last box is graded, so nothing far from it needs to be scanned; these caps keep a
# 100 kB (or 10 MB) completion as cheap as a short one and keep pathological answers away from SymPy.
MAX_ANSWER_CHARS = 2048
_BOX_LOOKBACK_CHARS = 2 * MAX_ANSWER_CHARS


# ---------------------------------------------------------------------------------------------------------------------
# Boxed answers
# ---------------------------------------------------------------------------------------------------------------------

_BOX_COMMAND_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Escaped characters (`\{`, `\}`, `\\`) are consumed as a unit so that they never count as grouping braces.
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_INLINE_ARGUMENT_RE = re.compile(r"[^$\n]*")


def _match_brace(text: str, open_index: int, limit: int) -> int | None:
    """Index of the `}` closing the `{` at `open_index`, or `None` if it is not closed before `limit`."""
    depth = 0
    for token in _BRACE_TOKEN_RE.finditer(text, open_index, limit):
        char = token.group()
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return token.start()
    return None


def _box_argument(text: str, command_end: int) -> tuple[int, str] | None:
    """End index and content of the argument of a box command ending at `command_end`, or `None` if malformed."""
    position = command_end
    while position < len(text) and text[position] in " \t":
        position += 1
    if position >= len(text):
        return None
    if text[position] == "{":
        close = _match_brace(text, position, min(len(text), position + MAX_ANSWER_CHARS + 2))
        if close is None:
            return None
        return close + 1, text[position + 1 : close]
    if position == command_end:  # `\boxedx` is not a box
        return None
    # `\boxed 5` form: the answer runs to the end of the math span or line.
    match = _INLINE_ARGUMENT_RE.match(text, position, min(len(text), position + MAX_ANSWER_CHARS + 1))
    content = match.group().rstrip()
    if not content or len(content) > MAX_ANSWER_CHARS:
        return None
    return match.end(), content


def _unwrap_boxes(text: str) -> str:
    """Replaces every well-formed inner box command by its content."""
    for _ in range(64):  # bounded: each pass removes one box
        found = False
        for match in _BOX_COMMAND_RE.finditer(text):
            argument = _box_argument(text, match.end())
            if argument is not None:
                end, content = argument
                text = text[: match.start()] + content + text[end:]
                found = True
                break
        if not found:
            break
    return text


def extract_boxed_answer(text: str) -> str | None:
    """
    Extracts the final answer of a completion: the content of its last `\\boxed{...}`.

    `\\fbox{...}` and the brace-less `\\boxed 5` form are accepted as well. Nested braces are matched (escaped braces
    such as `\\{` do not count). When boxes are nested, e.g. `\\boxed{\\frac{\\boxed{1}}{2}}`, the answer is the
    outermost box that encloses the last box command, with inner box commands unwrapped (here `\\frac{1}{2}`). If the
    last box is not closed (e.g. a truncated generation), there is no answer. Only the tail of the text near the last
    box command is scanned, so the cost does not grow with the length of the reasoning.

    Args:
        text (`str`):
            Completion text.

    Returns:
        `str` or `None`:
            The stripped answer (possibly empty for `\\boxed{}`), or `None` if the text has no well-formed final box.
    """
    if not isinstance(text, str):
        return None
    last = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if last < 0:
        return None
    window_start = max(0, last - _BOX_LOOKBACK_CHARS)
    window = text[window_start:]
    boxes = []  # (start, end or None, content or None)
    for match in _BOX_COMMAND_RE.finditer(window):
        argument = _box_argument(window, match.end())
        if argument is None:
            boxes.append((match.start(), None, None))
        else:
            boxes.append((match.start(), argument[0], argument[1]))
    if not boxes:
        return None
    last_start = boxes[-1][0]
    for start, end, content in boxes:  # earlier starts first, so the first enclosing box is the outermost one
        if end is not None and start <= last_start < end:
            return _unwrap_boxes(content).strip()
    return None


def strip_boxed(answer: str) -> str:
    """
    Removes one surrounding `\\boxed{...}` (or `\\fbox{...}`) from a gold answer.

    Benchmark gold answers are not uniformly boxed (e.g. AIME24 gives `\\boxed{204}`, AMC23 gives `27`); this brings
    them to the same unboxed form. A box that covers only part of the string is left alone.

    Args:
        answer (`str`):
            Gold answer. Non-string values (e.g. an integer answer) are converted with `str`.

    Returns:
        `str`:
            The content of the surrounding box if the whole (stripped) string is one box, else the stripped string.
    """
    text = str(answer).strip()
    match = _BOX_COMMAND_RE.match(text)
    if match is not None:
        argument = _box_argument(text, match.end())
        if argument is not None and argument[0] == len(text):
            return argument[1].strip()
    return text


# ---------------------------------------------------------------------------------------------------------------------
# Normalisation, for the cheap string comparison that runs before math-verify
# ---------------------------------------------------------------------------------------------------------------------

_TEXT_COMMANDS = ("text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mathit", "mbox", "hbox")
_TEXT_COMMAND_RE = re.compile(r"\\(?:" + "|".join(_TEXT_COMMANDS) + r")\s*\{")
# A trailing word in text mode after a non-empty answer is a unit: `5.4 \text{ cents}`, `10\mbox{ cm}`.
_TRAILING_UNIT_RE = re.compile(r"^(.*\S)\s*\\(?:text|mbox|mathrm|textrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}$", re.DOTALL)
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])|°")
_SIZING_RE = re.compile(
    r"\\(?:left|right)\s*\.|\\(?:left|right|[Bb]igg?[lr]?|displaystyle|textstyle)(?![A-Za-z])|\\(?:q?quad)(?![A-Za-z])"
)
_SPACING_RE = re.compile(r"\\[!,;: ]|~")
_FRAC_TWO_TOKENS_RE = re.compile(r"\\([dt]?frac)([0-9A-Za-z])([0-9A-Za-z])")
_FRAC_FIRST_TOKEN_RE = re.compile(r"\\([dt]?frac)([0-9A-Za-z])\{")
_FRAC_SECOND_TOKEN_RE = re.compile(r"\\([dt]?frac)(\{[^{}]*\})([0-9A-Za-z])")
_SQRT_TOKEN_RE = re.compile(r"\\sqrt([0-9A-Za-z])")
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SIMPLE_LHS_RE = re.compile(r"[A-Za-z](?:_\{?[0-9A-Za-z]+\}?)?|\\[A-Za-z]+")
_CHOICE_RE = re.compile(r"\(?([A-E])\)?")
_CHOICE_PREFIX_RE = re.compile(r"\(([A-E])\).+|([A-E])[):.].+", re.DOTALL)
_COMMAND_PERIOD_RE = re.compile(r"\\(?:right)?\.$")  # `\right.` and `\.` end in a period that belongs to LaTeX


def _unwrap_text_commands(text: str) -> str:
    """Replaces `\\text{X}`-like commands by `X` (brace-matched)."""
    for _ in range(64):
        match = _TEXT_COMMAND_RE.search(text)
        if match is None:
            break
        close = _match_brace(text, match.end() - 1, len(text))
        if close is None:
            break
        text = text[: match.start()] + text[match.end() : close] + text[close + 1 :]
    return text


def strip_math_delimiters(text: str) -> str:
    """
    Removes `\\[...\\]`, `\\(...\\)` and `$` delimiters around (or inside) an answer, and a final period.

    Args:
        text (`str`):
            A bare answer.

    Returns:
        `str`: The answer without its math delimiters, stripped.
    """
    text = text.strip()
    for left, right in (("\\[", "\\]"), ("\\(", "\\)")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left) : -len(right)].strip()
    # Olympiad-Bench writes multi-part answers as `$a$,$b$`: dropping every `$` keeps all parts in one expression.
    text = text.replace("\\$", "").replace("$", "").strip()
    # A sentence-ending period (`$x$.`) is not part of the answer and makes the LaTeX parser give up.
    if text.endswith(".") and not _COMMAND_PERIOD_RE.search(text):
        text = text[:-1].rstrip()
    return text


def normalize_answer(answer: str) -> str:
    """
    Canonical string form of an answer, for the cheap equality test that runs before math-verify.

    Only rewrites that keep the mathematical meaning (or drop a unit / presentation detail) are applied, because
    equal normal forms are accepted without any further check.

    Args:
        answer (`str`):
            A bare answer (e.g. the content of a box).

    Returns:
        `str`: The normal form; two answers with the same non-empty normal form are equal.
    """
    text = strip_math_delimiters(answer)
    text = _SIZING_RE.sub("", text)
    text = _SPACING_RE.sub(" ", text)
    text = _DEGREE_RE.sub("", text)
    text = text.replace("\\%", "").replace("%", "")
    match = _TRAILING_UNIT_RE.match(text)
    if match is not None:
        text = match.group(1)
    text = _unwrap_text_commands(text)
    text = re.sub(r"\s+", "", text)
    text = text.replace("{,}", "")
    text = _FRAC_TWO_TOKENS_RE.sub(r"\\frac{\2}{\3}", text)
    text = _FRAC_FIRST_TOKEN_RE.sub(r"\\frac{\2}{", text)
    text = _FRAC_SECOND_TOKEN_RE.sub(r"\\frac\2{\3}", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SQRT_TOKEN_RE.sub(r"\\sqrt{\1}", text)
    text = text.rstrip(".")
    if text.count("=") == 1:
        lhs, rhs = text.split("=")
        if rhs and _SIMPLE_LHS_RE.fullmatch(lhs):
            text = rhs
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if _NUMBER_RE.fullmatch(text):
        try:
            number = Decimal(text)
            if number == number.to_integral_value():
                text = str(int(number))
            else:
                text = format(number.normalize(), "f")
        except (InvalidOperation, ValueError):
            pass
    return text


def choice_letter(answer: str, allow_suffix: bool) -> str | None:
    """
    The multiple-choice letter (A-E) an answer names, e.g. for `\\text{(B)}` or `B`.

    Args:
        answer (`str`):
            A bare answer.
        allow_suffix (`bool`):
            Whether the letter may be followed by the option's text, as in `(B) 12` (accepted in predictions, not in
            gold answers).

    Returns:
        `str` or `None`: The letter, or `None` if the answer names none.
    """
    text = normalize_answer(answer)
    match = _CHOICE_RE.fullmatch(text)
    if match is not None:
        return match.group(1)
    if allow_suffix:
        match = _CHOICE_PREFIX_RE.fullmatch(text)
        if match is not None:
            return match.group(1) or match.group(2)
    return None
