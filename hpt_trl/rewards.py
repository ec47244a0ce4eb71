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
Binary math-accuracy reward, used both as a TRL reward function and by the evaluation harness.

A completion is correct when the content of its last `\\boxed{...}` is mathematically equivalent to the gold answer.
The check runs cheap steps first: a normalised string comparison in this process (this settles most rollouts), then
[math-verify](https://github.com/huggingface/Math-Verify) (LaTeX parsing plus SymPy equivalence).

SymPy can take arbitrarily long (or arbitrarily much memory) on adversarial answers such as `10^{10^{10}}`, and
math-verify's own timeout relies on `signal.alarm`, which only works in the main thread of the main interpreter. TRL
may call reward functions from worker threads and from several processes, so the math-verify step runs in a small pool
of long-lived helper subprocesses instead: each answer gets a wall-clock deadline, a helper that misses it is killed
and replaced, and the answer scores 0 and is counted as a timeout. Helpers are plain `subprocess` children that load
this file by path (not through `multiprocessing`), so they never re-import the training script's `__main__`, never
import `torch`, and are safe to start from any thread. (POSIX only, like the training stack.)
"""

import atexit
import json
import logging
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from decimal import Decimal, InvalidOperation


logger = logging.getLogger(__name__)

# Only the answer inside the last box is graded, so nothing far from it needs to be scanned; these caps keep a
# 100 kB (or 10 MB) completion as cheap as a short one and keep pathological answers away from SymPy.
_MAX_ANSWER_CHARS = 2048
_BOX_LOOKBACK_CHARS = 2 * _MAX_ANSWER_CHARS

# A cold start (first import of sympy/antlr from a cold disk) can take tens of seconds; this bounds only the helper's
# start-up, never an individual answer.
_WORKER_STARTUP_TIMEOUT_S = 180.0
# The helper tries to stop itself (SIGALRM, which is available there because it runs in its own main thread) slightly
# before the caller's deadline, so that a merely slow SymPy call costs no process restart; the caller's hard deadline
# still kills helpers stuck inside C code (big-integer arithmetic ignores signals until it returns).
_SOFT_DEADLINE_FRACTION = 0.8
_USE_SOFT_DEADLINE = True
# Huge powers make SymPy/GMP allocate gigabytes within seconds; an address-space cap turns that into a MemoryError (or
# a helper crash, which is handled like a timeout) instead of pressure on the training job.
_WORKER_MEMORY_LIMIT_BYTES = 4 * 1024**3
_RESULT_CACHE_SIZE = 8192

_TIMEOUT_METRIC_NAME = "rewards/accuracy_reward/timeouts"


# ---------------------------------------------------------------------------------------------------------------------
# Answer extraction
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
        close = _match_brace(text, position, min(len(text), position + _MAX_ANSWER_CHARS + 2))
        if close is None:
            return None
        return close + 1, text[position + 1 : close]
    if position == command_end:  # `\boxedx` is not a box
        return None
    # `\boxed 5` form: the answer runs to the end of the math span or line.
    match = _INLINE_ARGUMENT_RE.match(text, position, min(len(text), position + _MAX_ANSWER_CHARS + 1))
    content = match.group().rstrip()
    if not content or len(content) > _MAX_ANSWER_CHARS:
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
# Cheap normalised string comparison
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


def _strip_math_delimiters(text: str) -> str:
    """Removes `\\[...\\]`, `\\(...\\)` and `$` delimiters around (or inside) an answer, and a final period."""
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


def _normalize_answer(answer: str) -> str:
    """
    Canonical string form of an answer, for the cheap equality test that runs before math-verify.

    Only rewrites that keep the mathematical meaning (or drop a unit / presentation detail) are applied, because
    equal normal forms are accepted without any further check.
    """
    text = _strip_math_delimiters(answer)
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


def _choice_letter(answer: str, allow_suffix: bool) -> str | None:
    """The multiple-choice letter (A-E) an answer names, e.g. for `\\text{(B)}` or `B`; `None` if it names none."""
    text = _normalize_answer(answer)
    match = _CHOICE_RE.fullmatch(text)
    if match is not None:
        return match.group(1)
    if allow_suffix:
        match = _CHOICE_PREFIX_RE.fullmatch(text)
        if match is not None:
            return match.group(1) or match.group(2)
    return None


# ---------------------------------------------------------------------------------------------------------------------
# math-verify, run inside a helper process
# ---------------------------------------------------------------------------------------------------------------------


_MATH_VERIFY_CONFIG = None


def _math_verify_equal(prediction: str, gold: str) -> bool:
    """
    math-verify equivalence of a bare predicted answer and a bare gold answer, with no time bound.

    Runs in the helper process (call it directly only on trusted input). math-verify's own signal-based timeouts are
    disabled (`None`) because the caller bounds the time.
    """
    from math_verify import verify

    gold_parsed = _parse_bare_answer(gold)
    if not gold_parsed:
        return False
    prediction_parsed = _parse_bare_answer(prediction)
    if not prediction_parsed:
        return False
    return bool(verify(gold_parsed, prediction_parsed, timeout_seconds=None))


def _parse_bare_answer(answer: str) -> list:
    """Parses one bare answer as a LaTeX math span (plain expressions are understood too), with no time bound."""
    global _MATH_VERIFY_CONFIG
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    if _MATH_VERIFY_CONFIG is None:
        _MATH_VERIFY_CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    body = _strip_math_delimiters(answer)
    if not body:
        return []
    return parse(
        "$" + body + "$",
        extraction_config=_MATH_VERIFY_CONFIG,
        extraction_mode="first_match",
        fallback_mode="no_fallback",
        parsing_timeout=None,
    )


def _math_verify_text_equal(text: str, gold: str) -> bool:
    """
    math-verify over a whole response, with no answer extracted first: math-verify's own extraction (its default
    configuration, as `math_verify.parse(text)`) finds the answer(s) in the text. Not used by the training reward; the
    evaluation's last grading fallback (DeepMath's `uni_eval.py`, which the HPT authors evaluate with). No time bound:
    it runs in the helper process.
    """
    from math_verify import parse, verify

    gold_parsed = _parse_bare_answer(gold)
    if not gold_parsed:
        return False
    prediction_parsed = parse(text, parsing_timeout=None)
    if not prediction_parsed:
        return False
    return bool(verify(gold_parsed, prediction_parsed, timeout_seconds=None))


class _SoftDeadline(BaseException):
    """Raised by the helper's alarm; a `BaseException`, so `except Exception` in math-verify/SymPy lets it through."""


def _reply(protocol, line: str) -> None:
    """Sends one protocol line from the helper; exits quietly if the parent has already gone."""
    try:
        protocol.write(line + "\n")
    except OSError:
        os._exit(0)


def _worker_main() -> None:
    """Entry point of a helper process: answers JSON-line requests on stdin with JSON-line verdicts."""
    import signal

    # The protocol owns the real stdout; anything printed by libraries (Python or C level) goes to stderr instead.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_LIMIT_BYTES, _WORKER_MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    # The "timeout is disabled" warning is expected here, and per-answer parse failures are not worth a log line.
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    parent = os.getppid()

    def _exit_when_orphaned():
        """Exits once the parent is gone (stdin EOF only ends an idle helper, not one stuck in a computation)."""
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=_exit_when_orphaned, daemon=True).start()

    armed = [False]

    def _on_alarm(signum, frame):
        """Interrupts the current check, unless the alarm arrives late (it must not hit the protocol code)."""
        if armed[0]:
            raise _SoftDeadline()

    signal.signal(signal.SIGALRM, _on_alarm)
    _math_verify_equal("\\frac{1}{2}", "0.5")  # loads the LaTeX grammar before the first timed request
    _reply(protocol, '{"ready": true}')

    for line in sys.stdin:
        timed_out = False
        equal = False
        try:
            try:
                request = json.loads(line)
                soft = request.get("soft")
                armed[0] = True
                if soft:
                    signal.setitimer(signal.ITIMER_REAL, float(soft))
                check = _math_verify_text_equal if request.get("whole_text") else _math_verify_equal
                equal = check(request["prediction"], request["gold"])
            finally:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftDeadline:
            timed_out = True
        except Exception:
            equal = False
        _reply(protocol, json.dumps({"equal": bool(equal), "timeout": timed_out}))


_STARTUP_FAILURE = (
    "The math-verify helper process exited during start-up; check that `math-verify` is installed for this Python "
    "interpreter (its error is on stderr above)."
)
_WORKER_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_hpt_trl_reward_worker', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "module._worker_main()\n"
)


class _Worker:
    """One helper process and the parent's end of its pipes."""

    def __init__(self):
        """Starts the helper process (without waiting for it to be ready)."""
        self.process = None
        self.buffer = b""
        self.ready = False
        self.startup_deadline = 0.0
        self.in_flight = None  # (task index, deadline) of the request being computed
        self.start()

    def start(self) -> None:
        """Launches a fresh helper process; it announces readiness with a `{"ready": true}` line."""
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOTSTRAP, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        self.buffer = b""
        self.ready = False
        self.in_flight = None
        self.startup_deadline = time.monotonic() + _WORKER_STARTUP_TIMEOUT_S

    @property
    def fileno(self) -> int:
        """Descriptor of the helper's reply pipe."""
        return self.process.stdout.fileno()

    def alive(self) -> bool:
        """Whether the helper process is running."""
        return self.process is not None and self.process.poll() is None

    def send(self, message: dict) -> None:
        """Writes one request line (ASCII JSON, so the helper's locale does not matter)."""
        data = (json.dumps(message) + "\n").encode()
        fd = self.process.stdin.fileno()
        while data:
            data = data[os.write(fd, data) :]

    def receive(self) -> list[dict] | None:
        """Complete messages available now, or `None` if the helper has exited."""
        chunk = os.read(self.fileno, 65536)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        messages = []
        for line in lines:
            try:
                messages.append(json.loads(line))
            except ValueError:
                pass  # not a protocol line; stray output is redirected in the helper, so this is only defensive
        return messages

    def kill(self) -> None:
        """Stops the helper at once (SIGKILL: one stuck in C code ignores anything milder) and closes its pipes."""
        if self.process is None:
            return
        try:
            self.process.kill()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.process = None

    def restart(self) -> None:
        """Replaces the helper process by a fresh one."""
        self.kill()
        self.start()


def _default_num_workers() -> int:
    """Pool size: `HPT_REWARD_NUM_WORKERS` if set, else up to 4 helpers, no more than the CPUs this process may use."""
    configured = os.environ.get("HPT_REWARD_NUM_WORKERS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


class _WorkerPool:
    """Process-wide set of helpers shared by all threads; each helper is used by one thread at a time."""

    def __init__(self):
        """Creates an empty pool; helpers are started on demand."""
        self._condition = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0
        self._pid = os.getpid()
        self.max_workers = _default_num_workers()

    def acquire(self, wanted: int) -> list[_Worker]:
        """Takes between 1 and `wanted` helpers, starting new ones up to `max_workers` (waits while all are in use)."""
        while True:
            with self._condition:
                while not self._idle and self._live >= self.max_workers:
                    self._condition.wait()
                taken = []
                while self._idle and len(taken) < wanted:
                    worker = self._idle.pop()
                    if worker.alive():
                        taken.append(worker)
                    else:
                        worker.kill()
                        self._live -= 1
                new = max(0, min(wanted - len(taken), self.max_workers - self._live))
                self._live += new
            created = []
            try:
                for _ in range(new):
                    created.append(_Worker())
            except BaseException:
                with self._condition:
                    self._live -= new - len(created)
                self.release(taken + created)
                raise
            taken += created
            if taken:  # empty only if every idle helper had died; their slots are free now
                return taken

    def release(self, workers: list[_Worker]) -> None:
        """Returns helpers to the pool; one with an unanswered request is killed instead."""
        with self._condition:
            for worker in workers:
                if worker.in_flight is None and worker.alive():
                    self._idle.append(worker)
                else:
                    # An unanswered request (an exception unwound the caller) would be read as the next reply.
                    worker.kill()
                    self._live -= 1
            self._condition.notify_all()

    def close(self) -> None:
        """Stops the idle helpers (at interpreter exit)."""
        with self._condition:
            for worker in self._idle:
                worker.kill()
                self._live -= 1
            self._idle = []

    def forget_after_fork(self) -> None:
        """Drops the parent's helpers in a forked child: both talking to the same pipes would corrupt both sides."""
        self._condition = threading.Condition()
        self._idle = []
        self._live = 0
        self._pid = os.getpid()


_POOL = _WorkerPool()
atexit.register(_POOL.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget_after_fork)


def _warm_up_pool(num_workers: int | None = None) -> None:
    """
    Starts helper processes and waits until they are ready, so that the first checks are not delayed by start-up.

    Args:
        num_workers (`int`, *optional*):
            How many helpers to have ready; defaults to the pool's maximum.
    """
    workers = _POOL.acquire(num_workers or _POOL.max_workers)
    try:
        for worker in workers:
            while not worker.ready:
                remaining = worker.startup_deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"A math-verify helper did not start within {_WORKER_STARTUP_TIMEOUT_S:.0f} s.")
                poller = select.poll()
                poller.register(worker.fileno, select.POLLIN)
                if poller.poll(math.ceil(remaining * 1000)):
                    messages = worker.receive()
                    if messages is None:
                        raise RuntimeError(_STARTUP_FAILURE)
                    worker.ready = any(message.get("ready") for message in messages)
    finally:
        _POOL.release(workers)


def _run_math_verify(
    tasks: list[tuple[str, str]], timeout_seconds: float, whole_text: bool = False
) -> list[tuple[bool, bool]]:
    """
    Checks `(prediction, gold)` pairs with math-verify in helper processes, each pair under its own deadline.

    With `whole_text=True` each prediction is a whole response that math-verify searches for its answer
    (`_math_verify_text_equal`, for the evaluation's fallback) instead of a bare answer. Returns one
    `(equal, timed_out)` per pair. A pair's deadline starts when it is handed to a helper; a helper that
    misses it is killed and replaced. A helper that dies mid-request counts as a timeout too.
    """
    results: list[tuple[bool, bool] | None] = [None] * len(tasks)
    if not tasks:
        return []
    if timeout_seconds is None or timeout_seconds <= 0:
        raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds}")
    workers = _POOL.acquire(len(tasks))
    pending = deque(range(len(tasks)))
    try:
        while pending or any(worker.in_flight is not None for worker in workers):
            now = time.monotonic()
            for worker in workers:
                if worker.ready and worker.in_flight is None and pending:
                    index = pending.popleft()
                    prediction, gold = tasks[index]
                    soft = timeout_seconds * _SOFT_DEADLINE_FRACTION if _USE_SOFT_DEADLINE else None
                    worker.in_flight = (index, now + timeout_seconds)
                    request = {"prediction": prediction, "gold": gold, "soft": soft}
                    if whole_text:
                        request["whole_text"] = True
                    try:
                        worker.send(request)
                    except OSError:
                        pass  # the helper died; its EOF is handled below
            waiting = [worker for worker in workers if not worker.ready or worker.in_flight is not None]
            if not waiting:
                continue
            deadlines = [w.in_flight[1] if w.in_flight is not None else w.startup_deadline for w in waiting]
            wait_ms = max(0, math.ceil((min(deadlines) - time.monotonic()) * 1000))
            # poll() rather than select(): a training process can hold more than FD_SETSIZE (1024) descriptors.
            poller = select.poll()
            for worker in waiting:
                poller.register(worker.fileno, select.POLLIN)
            readable = {fd for fd, _ in poller.poll(wait_ms)}
            for worker in waiting:
                if worker.fileno not in readable:
                    continue
                messages = worker.receive()
                if messages is None:
                    if worker.in_flight is not None:
                        logger.warning("A math-verify helper exited while checking an answer; it scores 0.")
                        results[worker.in_flight[0]] = (False, True)
                    elif not worker.ready:
                        raise RuntimeError(f"{_STARTUP_FAILURE} Exit code: {worker.process.poll()}.")
                    worker.restart()
                    continue
                for message in messages:
                    if message.get("ready"):
                        worker.ready = True
                    elif worker.in_flight is not None:
                        results[worker.in_flight[0]] = (bool(message["equal"]), bool(message["timeout"]))
                        worker.in_flight = None
            now = time.monotonic()
            for worker in waiting:
                if worker.in_flight is not None and now >= worker.in_flight[1]:
                    results[worker.in_flight[0]] = (False, True)
                    worker.restart()  # the replacement loads while the caller carries on
                elif not worker.ready and worker.process is not None and now >= worker.startup_deadline:
                    raise RuntimeError(
                        f"The math-verify helper process did not start within {_WORKER_STARTUP_TIMEOUT_S:.0f} s."
                    )
    finally:
        _POOL.release(workers)
    return [result if result is not None else (False, False) for result in results]


# ---------------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------------

_COUNTER_LOCK = threading.Lock()
_TIMEOUT_COUNT = 0
_CACHE_LOCK = threading.Lock()
_CACHE: OrderedDict = OrderedDict()


def timeout_count() -> int:
    """
    Number of answer checks of this process that ran out of time (or whose helper crashed) so far.

    Returns:
        `int`:
            Cumulative count since the module was imported.
    """
    return _TIMEOUT_COUNT


def _add_timeouts(count: int) -> None:
    """Adds to the process-wide timeout counter (callers may run in several threads)."""
    global _TIMEOUT_COUNT
    if count:
        with _COUNTER_LOCK:
            _TIMEOUT_COUNT += count


def _gold_candidates(ground_truth) -> list[str]:
    """Unboxed gold answers of one row: a single answer, or a list of acceptable ones."""
    if ground_truth is None:
        return []
    if isinstance(ground_truth, (list, tuple)):
        return [strip_boxed(gold) for gold in ground_truth if gold is not None]
    return [strip_boxed(ground_truth)]


def _cheap_verdict(prediction: str, gold: str) -> bool | None:
    """`True`/`False` when the string-level checks settle the pair, `None` when math-verify is needed."""
    if not prediction or not gold or len(gold) > _MAX_ANSWER_CHARS:
        return prediction == gold and bool(gold)
    gold_letter = _choice_letter(gold, allow_suffix=False)
    if gold_letter is not None:
        # A choice letter is a label, not a variable: compare labels, never expressions.
        return _choice_letter(prediction, allow_suffix=True) == gold_letter
    normalized_prediction = _normalize_answer(prediction)
    normalized_gold = _normalize_answer(gold)
    if normalized_prediction == normalized_gold and normalized_gold:
        return True
    if (
        normalized_gold.isalpha()
        and len(normalized_gold) > 1
        and normalized_prediction.lower() == normalized_gold.lower()
    ):
        return True  # words such as `\text{Evelyn}`
    return None


def _verify_many(
    completions: list[str], ground_truths: list, timeout_seconds: float, extracted: bool = False
) -> tuple[list[bool], int]:
    """
    Verdicts for parallel lists of completions and ground truths, and the number of timeouts among them.

    With `extracted=True` the completions are answers already extracted (by the caller), graded as they are.
    """
    verdicts = [False] * len(completions)
    tasks: list[tuple[str, str]] = []
    owners: list[int] = []
    for index, (completion, ground_truth) in enumerate(zip(completions, ground_truths)):
        try:
            prediction = completion.strip() if extracted else extract_boxed_answer(completion)
            if prediction is None:
                continue
            for gold in _gold_candidates(ground_truth):
                verdict = _cheap_verdict(prediction, gold)
                if verdict is None:
                    with _CACHE_LOCK:
                        verdict = _CACHE.get((prediction, gold))
                    if verdict is None:
                        tasks.append((prediction, gold))
                        owners.append(index)
                        continue
                if verdict:
                    verdicts[index] = True
                    break
        except Exception:  # malformed input never fails a training step
            logger.debug("Answer check failed", exc_info=True)
    timeouts = 0
    if tasks:
        # Pairs already settled by an earlier gold of the same row need no helper time.
        keep = [i for i, owner in enumerate(owners) if not verdicts[owner]]
        # Rows often repeat a pair (a group's rollouts agree, greedy samples are copies): check each pair once.
        distinct = list(dict.fromkeys(tasks[i] for i in keep))
        result_of = dict(zip(distinct, _run_math_verify(distinct, timeout_seconds), strict=True))
        timed_out_rows = set()
        for i in keep:
            equal, timed_out = result_of[tasks[i]]
            if timed_out:
                timed_out_rows.add(owners[i])
                continue
            with _CACHE_LOCK:
                _CACHE[tasks[i]] = equal
                if len(_CACHE) > _RESULT_CACHE_SIZE:
                    _CACHE.popitem(last=False)
            if equal:
                verdicts[owners[i]] = True
        timeouts = sum(1 for row in timed_out_rows if not verdicts[row])
    _add_timeouts(timeouts)
    return verdicts, timeouts


def verify_answer(completion: str, ground_truth: str, timeout_seconds: float = 5.0) -> bool:
    """
    Checks whether a completion's final boxed answer is mathematically equivalent to the gold answer.

    The answer is the content of the last `\\boxed{...}` (see [`extract_boxed_answer`]); a completion without one is
    wrong. The gold answer may be boxed or not (one surrounding box is removed). Multiple-choice golds (`A`-`E`,
    `(B)`, `\\text{(C)}`) are compared as letters. Otherwise a normalised string comparison is tried first, then
    math-verify (LaTeX and plain-expression parsing, SymPy equivalence) in a helper process.

    Safe to call from any thread and any process. The math-verify step gets `timeout_seconds` of wall time; past that
    the answer counts as wrong, [`timeout_count`] increases and, if the helper did not stop by itself, it is killed
    and replaced. Not included in that limit, and bounded separately: starting a helper (once per process and after
    each kill; at most 180 s) and waiting for a free helper while other threads use all of them. Malformed input never
    raises.

    Args:
        completion (`str`):
            Model output containing the final answer in `\\boxed{...}`.
        ground_truth (`str`):
            Gold answer, boxed or not. A list of acceptable answers is also accepted.
        timeout_seconds (`float`, *optional*, defaults to `5.0`):
            Wall-time limit of the math-verify check.

    Returns:
        `bool`:
            `True` iff the final answer is equivalent to the gold answer.
    """
    verdicts, _ = _verify_many([completion], [ground_truth], timeout_seconds)
    return verdicts[0]


def verify_extracted_answers(answers: list, ground_truths: list, timeout_seconds: float = 5.0) -> list[bool]:
    """
    Grades answers that the caller has already extracted (e.g. the text after "The answer is:"), each against its gold
    answer, with the checks of [`verify_answer`] (normalised comparison, then math-verify in a helper process under
    `timeout_seconds`). Not used by the training reward.

    Args:
        answers (`list[str | None]`):
            Bare answers; `None` (nothing extracted) is wrong.
        ground_truths (`list`):
            Gold answers, one per answer, boxed or not (or lists of acceptable ones).
        timeout_seconds (`float`, *optional*, defaults to `5.0`):
            Wall-time limit of one math-verify check.

    Returns:
        `list[bool]`: One verdict per answer.
    """
    if len(answers) != len(ground_truths):
        raise ValueError(f"Got {len(answers)} answers but {len(ground_truths)} gold answers; expected one each.")
    verdicts = [False] * len(answers)
    present = [i for i, answer in enumerate(answers) if isinstance(answer, str) and answer.strip()]
    found, _ = _verify_many(
        [answers[i] for i in present], [ground_truths[i] for i in present], timeout_seconds, extracted=True
    )
    for i, verdict in zip(present, found, strict=True):
        verdicts[i] = verdict
    return verdicts


def verify_whole_texts(texts: list[str], ground_truths: list, timeout_seconds: float = 5.0) -> list[bool]:
    """
    Grades whole responses with math-verify, which looks for the answer anywhere in the text with its own extraction
    (`math_verify.parse(text)` with its default configuration) instead of the last `\\boxed{}`. This is the last
    grading fallback of DeepMath's `uni_eval.py` (the HPT authors' evaluation); the training reward never uses it.
    Each check runs in a helper process under `timeout_seconds` (a check that runs out is wrong and counts in
    [`timeout_count`]).

    Args:
        texts (`list[str]`):
            The responses.
        ground_truths (`list`):
            Gold answers, one per response, boxed or not (or lists of acceptable ones).
        timeout_seconds (`float`, *optional*, defaults to `5.0`):
            Wall-time limit of one check.

    Returns:
        `list[bool]`: One verdict per response.
    """
    if len(texts) != len(ground_truths):
        raise ValueError(f"Got {len(texts)} responses but {len(ground_truths)} gold answers; expected one each.")
    tasks, owners = [], []
    for index, (text, ground_truth) in enumerate(zip(texts, ground_truths)):
        if not isinstance(text, str) or not text.strip():
            continue
        for gold in _gold_candidates(ground_truth):
            if gold:
                tasks.append((text, gold))
                owners.append(index)
    verdicts = [False] * len(texts)
    timed_out_rows = set()
    for owner, (equal, timed_out) in zip(owners, _run_math_verify(tasks, timeout_seconds, whole_text=True)):
        verdicts[owner] = verdicts[owner] or equal
        if timed_out:
            timed_out_rows.add(owner)
    _add_timeouts(sum(1 for row in timed_out_rows if not verdicts[row]))
    return verdicts


def _completion_text(completion) -> str:
    """Text of a standard (string) or conversational (list of messages) completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        parts = []
        for message in completion:
            if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
                continue
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, (list, tuple)):  # multimodal form: [{"type": "text", "text": ...}, ...]
                parts.extend(
                    c.get("text", "") for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)
                )
        return "\n".join(parts)
    return ""


def accuracy_reward(completions, solution, **kwargs) -> list[float]:
    """
    Binary accuracy reward for math problems, in the TRL reward-function format.

    Each completion scores 1.0 if the content of its last `\\boxed{...}` is mathematically equivalent to its gold
    answer, else 0.0 (see [`verify_answer`]). This is the reward of the paper's training runs: binary, answer required
    in a box, checked by normalisation then a SymPy-based verifier. Checks that need math-verify run in parallel helper
    processes (at most `HPT_REWARD_NUM_WORKERS`, default `min(4, number of CPUs)`), each with a 5-second limit; a
    check that runs out of time scores 0.0.

    Args:
        completions (`list[str]` or `list[list[dict]]`):
            Completions, as strings (standard format) or lists of messages such as
            `[{"role": "assistant", "content": ...}]` (conversational format; assistant contents are joined).
        solution (`list[str]`):
            Gold answers, one per completion, boxed or not.
        **kwargs:
            Other columns passed by the trainer. If `log_metric` is a callable (TRL passes one), the number of
            timed-out checks of this call is logged as `"rewards/accuracy_reward/timeouts"`. `timeout_seconds`
            overrides the per-check limit.

    Returns:
        `list[float]`:
            1.0 or 0.0 per completion.
    """
    timeout_seconds = kwargs.get("timeout_seconds")
    if not isinstance(timeout_seconds, (int, float)) or isinstance(timeout_seconds, bool) or timeout_seconds <= 0:
        timeout_seconds = 5.0  # also ignores a dataset column that happens to share the name
    texts = [_completion_text(completion) for completion in completions]
    if len(solution) != len(texts):
        raise ValueError(f"Got {len(texts)} completions but {len(solution)} solutions; expected one per completion.")
    verdicts, timeouts = _verify_many(texts, list(solution), timeout_seconds)
    log_metric = kwargs.get("log_metric")
    if callable(log_metric):
        log_metric(_TIMEOUT_METRIC_NAME, float(timeouts))
    return [1.0 if verdict else 0.0 for verdict in verdicts]


def format_reward(completions, **kwargs) -> list[float]:
    """
    Format reward: 1.0 if the completion states a final answer in a well-formed `\\boxed{...}`, else 0.0.

    The paper's training runs (authors' scripts, `reward_impl_version=6`) use no separate format term: the only format
    requirement is that the accuracy check can find a boxed answer (a completion without one scores 0). The authors'
    code also contains a `<think>...</think>` tag check, but only in reward variants that the HPT scripts do not use,
    so it is not reproduced here. This function exposes the box requirement on its own, e.g. for logging how often
    rollouts give no parseable answer.

    Args:
        completions (`list[str]` or `list[list[dict]]`):
            Completions in standard or conversational format.
        **kwargs:
            Ignored (other columns passed by the trainer).

    Returns:
        `list[float]`:
            1.0 or 0.0 per completion.
    """
    rewards = []
    for completion in completions:
        answer = extract_boxed_answer(_completion_text(completion))
        rewards.append(1.0 if answer else 0.0)
    return rewards
