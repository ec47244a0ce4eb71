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
Time-bounded verification of math answers: is a predicted answer mathematically equivalent to the gold answer?

The check runs cheap steps first: a normalised string comparison in this process (`hpt_trl.answer_extraction`; this
settles most rollouts), then [math-verify](https://github.com/huggingface/Math-Verify) (LaTeX parsing plus SymPy
equivalence). The training reward ([`~hpt_trl.rewards.accuracy_reward`]) and the evaluation harness grade with it.

SymPy can take arbitrarily long (or arbitrarily much memory) on adversarial answers such as `10^{10^{10}}`, and
math-verify's own timeout relies on `signal.alarm`, which only works in the main thread of the main interpreter. TRL
may call reward functions from worker threads and from several processes, so the math-verify step runs in a
[pebble](https://github.com/noxdafox/pebble) process pool instead: each check gets a wall-clock deadline, pebble kills
a worker that misses it and starts a replacement, and the check scores 0 and is counted as a timeout. Workers are
started with `spawn` (a fresh interpreter, safe to start from any thread of a process that holds CUDA state, unlike
`fork`); as in any `spawn` child, the parent's main script is imported (not run) before the worker starts. (POSIX
only, like the training stack.)
"""

import atexit
import concurrent.futures
import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import threading
import time
from collections import OrderedDict
from concurrent.futures.process import BrokenProcessPool

from pebble import ProcessExpired, ProcessPool

from .answer_extraction import (
    MAX_ANSWER_CHARS,
    choice_letter,
    extract_boxed_answer,
    normalize_answer,
    strip_boxed,
    strip_math_delimiters,
)


logger = logging.getLogger(__name__)

# A cold start (first import of sympy/antlr from a cold disk) can take tens of seconds; this bounds only a worker's
# start-up, never an individual answer.
_WORKER_STARTUP_TIMEOUT_S = 180.0
# The worker tries to stop itself (SIGALRM, which is available there because the check runs in its main thread)
# slightly before the caller's deadline, so that a merely slow SymPy call costs no process restart; pebble's hard
# deadline still kills workers stuck inside C code (big-integer arithmetic ignores signals until it returns).
_SOFT_DEADLINE_FRACTION = 0.8
_USE_SOFT_DEADLINE = True
# Huge powers make SymPy/GMP allocate gigabytes within seconds; an address-space cap turns that into a MemoryError (or
# a worker crash, which is handled like a timeout) instead of pressure on the training job. The cap is counted on top
# of what the worker has mapped when it starts, since the imports of the parent's main script come before it.
_WORKER_MEMORY_LIMIT_BYTES = 4 * 1024**3
_RESULT_CACHE_SIZE = 8192

_STARTUP_FAILURE = (
    "The math-verify worker processes exited during start-up; check that `math-verify` is installed for this Python "
    "interpreter (its error is on stderr above)."
)


# ---------------------------------------------------------------------------------------------------------------------
# math-verify, run inside a worker process
# ---------------------------------------------------------------------------------------------------------------------


_MATH_VERIFY_CONFIG = None


def _math_verify_equal(prediction: str, gold: str) -> bool:
    """
    math-verify equivalence of a bare predicted answer and a bare gold answer, with no time bound.

    Runs in the worker process (call it directly only on trusted input). math-verify's own signal-based timeouts are
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
    body = strip_math_delimiters(answer)
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
    it runs in the worker process.
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
    """Raised by the worker's alarm; a `BaseException`, so `except Exception` in math-verify/SymPy lets it through."""


# Whether an alarm may interrupt the code running now: only the check itself, never pebble's reply to the parent.
_ALARM_ARMED = False


def _on_alarm(signum, frame):
    """Interrupts the current check, unless the alarm arrives late."""
    if _ALARM_ARMED:
        raise _SoftDeadline()


def _address_space_in_use() -> int:
    """Bytes of address space this process has mapped now (Linux), or 0 where that cannot be read."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _init_worker() -> None:
    """Prepares a pool worker (pebble's `initializer`): limits, signals, and a loaded LaTeX grammar."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import resource

        limit = _address_space_in_use() + _WORKER_MEMORY_LIMIT_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    # pebble's own SIGTERM handler runs only between bytecodes, and pebble waits 3 s before it sends SIGKILL, so a
    # worker stuck in C code would outlive its deadline by that much; the default action ends it at once. pebble
    # terminates a worker only while it holds the lock that workers take to fetch a task or reply, so none is lost.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, _on_alarm)
    # The "timeout is disabled" warning is expected here, and per-answer parse failures are not worth a log line.
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    parent = os.getppid()

    def _exit_when_orphaned():
        """Exits once the parent is gone (a closed pipe only ends an idle worker, not one stuck in a computation)."""
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=_exit_when_orphaned, daemon=True).start()
    _math_verify_equal("\\frac{1}{2}", "0.5")  # loads the LaTeX grammar before the first timed check


def _check_pair(prediction: str, gold: str, whole_text: bool, soft_deadline_s: float | None) -> tuple[bool, bool]:
    """
    One math-verify check, run in a worker: `(equal, timed_out)`. With `soft_deadline_s` the worker's alarm stops the
    check after that many seconds (`timed_out=True`); an error in math-verify or SymPy means not equal.
    """
    global _ALARM_ARMED
    check = _math_verify_text_equal if whole_text else _math_verify_equal
    try:
        try:
            _ALARM_ARMED = True
            if soft_deadline_s:
                signal.setitimer(signal.ITIMER_REAL, soft_deadline_s)
            return check(prediction, gold), False
        finally:
            _ALARM_ARMED = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _SoftDeadline:
        return False, True
    except Exception:
        return False, False


# ---------------------------------------------------------------------------------------------------------------------
# The worker pool
# ---------------------------------------------------------------------------------------------------------------------


def _default_num_workers() -> int:
    """Pool size: `HPT_REWARD_NUM_WORKERS` if set, else up to 4 workers, no more than the CPUs this process may use."""
    configured = os.environ.get("HPT_REWARD_NUM_WORKERS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


_POOL_LOCK = threading.Lock()
_POOL: ProcessPool | None = None
_POOL_SIZE = 0


def _get_pool() -> ProcessPool:
    """The process-wide pool, shared by all threads; created on first use (its workers start with the first task)."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None:
            _POOL_SIZE = _default_num_workers()
            _POOL = ProcessPool(
                max_workers=_POOL_SIZE,
                initializer=_init_worker,
                context=multiprocessing.get_context("spawn"),
            )
            # A multiprocessing child (e.g. a DataLoader worker) that made its own pool joins its children before it
            # exits, and runs no atexit hooks: pebble's idle workers would keep it alive forever. Finalizers with an
            # exit priority run before that join, in the main process and in such children alike.
            multiprocessing.util.Finalize(None, _close_pool, exitpriority=10)
        return _POOL


def _discard_pool(pool: ProcessPool) -> None:
    """Stops a broken pool; the next call makes a fresh one."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is pool:
            _POOL = None
    pool.stop()
    pool.join()


def _close_pool() -> None:
    """Stops the pool's workers (at interpreter exit)."""
    pool = _POOL
    if pool is not None:
        _discard_pool(pool)


def _forget_pool_after_fork() -> None:
    """
    Drops the parent's pool in a forked child: the child inherits the pool object but not the threads that run it, so
    a check scheduled on it would wait forever, and stopping it would kill the parent's workers.
    """
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()


atexit.register(_close_pool)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _warm_up_pool(num_workers: int | None = None) -> None:
    """
    Starts worker processes and waits until they are ready, so that the first checks are not delayed by start-up.

    Args:
        num_workers (`int`, *optional*):
            How many workers to have ready; defaults to the pool's size.
    """
    pool = _get_pool()
    wanted = min(num_workers or _POOL_SIZE, _POOL_SIZE)
    deadline = time.monotonic() + _WORKER_STARTUP_TIMEOUT_S
    ready = set()
    # pebble cannot address a worker, so tasks go out until `wanted` distinct workers have answered one (a worker runs
    # its initializer before its first task).
    while len(ready) < wanted:
        futures = [pool.schedule(os.getpid) for _ in range(wanted - len(ready))]
        try:
            for future in futures:
                ready.add(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except concurrent.futures.TimeoutError:
            raise RuntimeError(
                f"A math-verify worker did not start within {_WORKER_STARTUP_TIMEOUT_S:.0f} s."
            ) from None
        except BrokenProcessPool:
            _discard_pool(pool)
            raise RuntimeError(_STARTUP_FAILURE) from None
        if len(ready) < wanted:
            time.sleep(0.05)  # lets the workers still starting up take the next tasks


def _run_math_verify(
    tasks: list[tuple[str, str]], timeout_seconds: float, whole_text: bool = False
) -> list[tuple[bool, bool]]:
    """
    Checks `(prediction, gold)` pairs with math-verify in worker processes, each pair under its own deadline.

    With `whole_text=True` each prediction is a whole response that math-verify searches for its answer
    (`_math_verify_text_equal`, for the evaluation's fallback) instead of a bare answer. Returns one
    `(equal, timed_out)` per pair. A pair's deadline starts when a worker takes it; pebble kills and replaces a worker
    that misses it. A worker that dies mid-check counts as a timeout too.
    """
    if not tasks:
        return []
    if timeout_seconds is None or timeout_seconds <= 0:
        raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds}")
    soft_deadline_s = timeout_seconds * _SOFT_DEADLINE_FRACTION if _USE_SOFT_DEADLINE else None
    results: list[tuple[bool, bool]] = [(False, False)] * len(tasks)
    pending = list(range(len(tasks)))
    # pebble gives up a whole pool when a worker dies with no check running (e.g. one that could not start): the pairs
    # it dropped get one fresh pool before the failure is reported.
    for _ in range(2):
        pool = _get_pool()
        try:
            futures = {
                pool.schedule(_check_pair, args=(*tasks[i], whole_text, soft_deadline_s), timeout=timeout_seconds): i
                for i in pending
            }
        except RuntimeError:  # the pool broke before this call
            _discard_pool(pool)
            continue
        pending = []
        not_done = set(futures)
        try:
            while not_done:
                # Every started check ends within its deadline, so a wait this long without any result means that no
                # worker could start.
                done, not_done = concurrent.futures.wait(
                    not_done,
                    timeout=_WORKER_STARTUP_TIMEOUT_S + timeout_seconds,
                    return_when=concurrent.futures.FIRST_COMPLETED,
                )
                if not done:
                    raise RuntimeError(
                        f"The math-verify workers did not start within {_WORKER_STARTUP_TIMEOUT_S:.0f} s."
                    )
                for future in done:
                    index = futures[future]
                    try:
                        results[index] = future.result()
                    except concurrent.futures.TimeoutError:
                        results[index] = (False, True)
                    except ProcessExpired:
                        logger.warning("A math-verify worker exited while checking an answer; it scores 0.")
                        results[index] = (False, True)
                    except BrokenProcessPool:
                        pending.append(index)
        finally:
            for future in not_done:
                future.cancel()
        if not pending:
            return results
        _discard_pool(pool)
    raise RuntimeError(_STARTUP_FAILURE)


# ---------------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------------


_COUNTER_LOCK = threading.Lock()
_TIMEOUT_COUNT = 0
_CACHE_LOCK = threading.Lock()
_CACHE: OrderedDict = OrderedDict()


def timeout_count() -> int:
    """
    Number of answer checks of this process that ran out of time (or whose worker crashed) so far.

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
    if not prediction or not gold or len(gold) > MAX_ANSWER_CHARS:
        return prediction == gold and bool(gold)
    gold_letter = choice_letter(gold, allow_suffix=False)
    if gold_letter is not None:
        # A choice letter is a label, not a variable: compare labels, never expressions.
        return choice_letter(prediction, allow_suffix=True) == gold_letter
    normalized_prediction = normalize_answer(prediction)
    normalized_gold = normalize_answer(gold)
    if normalized_prediction == normalized_gold and normalized_gold:
        return True
    if (
        normalized_gold.isalpha()
        and len(normalized_gold) > 1
        and normalized_prediction.lower() == normalized_gold.lower()
    ):
        return True  # words such as `\text{Evelyn}`
    return None


def verify_batch(
    completions: list[str], ground_truths: list, timeout_seconds: float = 5.0, extracted: bool = False
) -> tuple[list[bool], int]:
    """
    Grades completions against their gold answers with the checks of [`verify_answer`], and counts the timeouts.

    Repeated `(answer, gold)` pairs of the batch are checked once, and math-verify results are cached across calls.
    Timeouts are added to [`timeout_count`].

    Args:
        completions (`list[str]`):
            Completions whose last `\\boxed{...}` is graded, or with `extracted=True` answers that the caller has
            already extracted, graded as they are.
        ground_truths (`list`):
            Gold answers, one per completion, boxed or not (or lists of acceptable ones).
        timeout_seconds (`float`, *optional*, defaults to `5.0`):
            Wall-time limit of one math-verify check.
        extracted (`bool`, *optional*, defaults to `False`):
            Whether `completions` holds bare answers instead of completions.

    Returns:
        `tuple[list[bool], int]`: One verdict per completion, and the number of completions that scored 0 because a
        check ran out of time.
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
        # Pairs already settled by an earlier gold of the same row need no worker time.
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

    The answer is the content of the last `\\boxed{...}` (see [`~hpt_trl.answer_extraction.extract_boxed_answer`]); a completion without one is
    wrong. The gold answer may be boxed or not (one surrounding box is removed). Multiple-choice golds (`A`-`E`,
    `(B)`, `\\text{(C)}`) are compared as letters. Otherwise a normalised string comparison is tried first, then
    math-verify (LaTeX and plain-expression parsing, SymPy equivalence) in a worker process.

    Safe to call from any thread and any process. The math-verify step gets `timeout_seconds` of wall time; past that
    the answer counts as wrong, [`timeout_count`] increases and, if the worker did not stop by itself, it is killed
    and replaced. Not included in that limit, and bounded separately: starting a worker (once per process and after
    each kill; at most 180 s) and waiting for a free worker while other threads use all of them. Malformed input never
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
    verdicts, _ = verify_batch([completion], [ground_truth], timeout_seconds)
    return verdicts[0]


def verify_extracted_answers(answers: list, ground_truths: list, timeout_seconds: float = 5.0) -> list[bool]:
    """
    Grades answers that the caller has already extracted (e.g. the text after "The answer is:"), each against its gold
    answer, with the checks of [`verify_answer`] (normalised comparison, then math-verify in a worker process under
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
    found, _ = verify_batch(
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
    Each check runs in a worker process under `timeout_seconds` (a check that runs out is wrong and counts in
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
