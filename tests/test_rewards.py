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

import json
import multiprocessing
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hpt_trl import verification
from hpt_trl.answer_extraction import strip_boxed
from hpt_trl.rewards import accuracy_reward, format_reward
from hpt_trl.verification import verify_answer


BENCHMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"

# An answer on which SymPy runs for minutes (it never finishes within the limits used here).
SLOW_ANSWER = "10^{10^{10}}"
SLOW_COMPLETION = "Let me compute. \\boxed{" + SLOW_ANSWER + "}"
# Generous: the machine running the tests may be shared and loaded.
TIMING_MARGIN_S = 1.5


# (completion, gold, expected)
EQUIVALENCE_CASES = [
    # fractions and decimals
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}", True),
    ("\\boxed{\\tfrac{1}{2}}", "0.5", True),
    ("\\boxed{\\frac{3}{6}}", "\\frac12", True),
    ("\\boxed{\\frac{1}{3}}", "0.5", False),
    # radicals and algebra
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", True),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{8}", False),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("\\boxed{x^2+1}", "(x+1)^2", False),
    ("\\boxed{p - q}", "p-q", True),
    ("\\boxed{q - p}", "p - q", False),
    # intervals
    ("\\boxed{[-2, 5)}", "[-2,5)", True),
    ("\\boxed{\\left[ -2, \\frac{10}{2} \\right)}", "[-2, 5)", True),
    ("\\boxed{[-2, 5]}", "[-2, 5)", False),
    ("\\boxed{(-\\infty, 0) \\cup (1, \\infty)}", "(-\\infty,0)\\cup(1,\\infty)", True),
    # tuples
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{\\left(3, 0.5\\pi\\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("\\boxed{(\\frac{\\pi}{2}, 3)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    # degrees, units, percent, thousands separators, trailing period
    ("\\boxed{10^\\circ}", "10", True),
    ("\\boxed{10}", "10^\\circ", True),
    ("\\boxed{90^{\\circ}}", "90^\\circ", True),
    ("\\boxed{11^\\circ}", "10^\\circ", False),
    ("\\boxed{5.4}", "5.4 \\text{ cents}", True),
    ("\\boxed{\\frac{270}{7}\\text{ degrees}}", "\\frac{270}7\\text{ degrees}", True),
    ("\\boxed{50\\%}", "50", True),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{1000.0}", "1000", True),
    ("\\boxed{42.}", "42", True),
    ("\\boxed{x = 5}", "5", True),
    # multiple choice: letters compare as letters
    ("\\boxed{\\text{(B)}}", "B", True),
    ("\\boxed{B}", "\\text{(B)}", True),
    ("\\boxed{(B) 12}", "B", True),
    ("\\boxed{\\textbf{(C)}}", "\\text{(C)}", True),
    ("\\boxed{A}", "B", False),
    ("\\boxed{12}", "B", False),
    ("\\boxed{B}", "12", False),
    # words
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", True),
    ("\\boxed{Evelyn}", "\\text{Evelyn}", True),
    ("\\boxed{\\text{Navin}}", "\\text{Evelyn}", False),
    # gold forms: boxed (AIME24), $-delimited (Olympiad-Bench), plain integers, several acceptable answers
    ("\\boxed{204}", "\\boxed{204}", True),
    ("\\boxed{204}", "\\boxed{205}", False),
    ("\\boxed{\\frac{1}{2n+2}}", "$\\frac{1}{2 n+2}$", True),
    ("\\boxed{1, \\frac{3+\\sqrt{21}}{2}}", "$1$,$\\frac{3 + \\sqrt{21}}{2}$", True),
    ("\\boxed{1}", "$1$,$\\frac{3 + \\sqrt{21}}{2}$", False),
    ("\\boxed{3}", ["2", "3"], True),
    ("\\boxed{4}", ["2", "3"], False),
    # box variants
    ("\\fbox{7}", "7", True),
    ("so $\\boxed 7$.", "7", True),
    ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}", True),
    # no box, empty box
    ("The answer is 5.", "5", False),
    ("The answer is $\\frac{1}{2}$", "\\frac12", False),
    ("\\boxed{}", "0", False),
    # nested boxes: the outermost box around the last box command counts, inner boxes are unwrapped
    ("\\boxed{\\frac{\\boxed{1}}{2}}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac{\\boxed{1}}{2}}", "1", False),
    # several boxes: the last one counts
    ("First guess \\boxed{1}, but finally \\boxed{2}.", "2", True),
    ("First guess \\boxed{1}, but finally \\boxed{2}.", "1", False),
    # a truncated final box is no answer, even if an earlier box was right
    ("\\boxed{2} hmm, actually \\boxed{\\frac{1}{2", "2", False),
]


@pytest.mark.parametrize(("completion", "gold", "expected"), EQUIVALENCE_CASES)
def test_verify_answer_table(completion, gold, expected):
    assert verify_answer("Reasoning...\n" + completion, gold) is expected


def test_no_timeouts_for_ordinary_answers():
    before = verification.timeout_count()
    completions = [case[0] for case in EQUIVALENCE_CASES]
    golds = [case[1] for case in EQUIVALENCE_CASES]
    expected = [1.0 if case[2] else 0.0 for case in EQUIVALENCE_CASES]
    calls = []
    assert accuracy_reward(completions, golds, log_metric=lambda name, value: calls.append((name, value))) == expected
    assert verification.timeout_count() == before
    assert calls == [("rewards/accuracy_reward/timeouts", 0.0)]


@pytest.mark.parametrize(
    "completion",
    [
        "\\boxed{\\frac{1}{}}}}}",
        "\\boxed{\\left(}",
        "\\boxed{\\frac{}{}}",
        "\\boxed{^^^_}",
        "\\boxed{\\sqrt[}{]}",
        "\\boxed{\\begin{pmatrix} 1 & 2 \\end{matrix}}",
        "\\boxed{\\\\\\\\}",
        "\\boxed{" + "(" * 100 + "}",
        "\\boxed{\x00\x01\ud800}",
        "\\boxed{$$$}",
        "",
    ],
)
def test_malformed_latex_scores_zero_without_raising(completion):
    assert verify_answer(completion, "\\frac{1}{2}") is False
    assert accuracy_reward([completion], ["\\frac{1}{2}"]) == [0.0]


def test_malformed_inputs_of_other_types():
    assert accuracy_reward([None, 5, [{"role": "user", "content": "\\boxed{2}"}]], ["2", "5", "2"]) == [0.0, 0.0, 0.0]
    assert verify_answer("\\boxed{2}", None) is False
    assert verify_answer("\\boxed{2}", 2) is True
    assert verify_answer("\\boxed{2}", "") is False


@pytest.mark.parametrize(
    "completion",
    [
        "x " * 50_000 + "so \\boxed{42}" + " done" * 20,
        "{" * 100_000 + "\\boxed{42}",
        "\\boxed{42}" * 10_000,
        "\\boxed{" + "x+" * 50_000 + "42}",  # answer longer than any real one: not graded
        "\\boxed{42" + "}" * 100_000,
    ],
)
def test_long_completion_is_fast(completion):
    assert len(completion) >= 100_000
    verification._warm_up_pool(1)
    start = time.monotonic()
    reward = accuracy_reward([completion], ["42"])
    elapsed = time.monotonic() - start
    assert elapsed < 0.5
    assert reward == [0.0 if "x+" in completion else 1.0]


def test_slow_expression_times_out_and_is_counted():
    verification._warm_up_pool(1)
    before = verification.timeout_count()
    start = time.monotonic()
    assert verify_answer(SLOW_COMPLETION, "1", timeout_seconds=1.0) is False
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + TIMING_MARGIN_S
    assert verification.timeout_count() == before + 1


def test_helper_stuck_past_its_own_deadline_is_killed(monkeypatch):
    # Without the helper's own alarm, only the caller's hard deadline (killing the helper) can end the check.
    monkeypatch.setattr(verification, "_USE_SOFT_DEADLINE", False)
    verification._warm_up_pool(1)
    before = verification.timeout_count()
    calls = []
    start = time.monotonic()
    reward = accuracy_reward(
        [SLOW_COMPLETION], ["1"], timeout_seconds=1.0, log_metric=lambda name, value: calls.append((name, value))
    )
    elapsed = time.monotonic() - start
    assert reward == [0.0]
    assert elapsed < 1.0 + TIMING_MARGIN_S
    assert verification.timeout_count() == before + 1
    assert calls == [("rewards/accuracy_reward/timeouts", 1.0)]
    # The killed helper is replaced: checks that need math-verify still work.
    assert verify_answer("\\boxed{\\frac{6}{12}}", "0.5")


def test_repeated_pairs_are_checked_once_and_counted_per_row(monkeypatch):
    sent = []
    real = verification._run_math_verify

    def recording(tasks, timeout_seconds):
        sent.append(list(tasks))
        return real(tasks, timeout_seconds)

    monkeypatch.setattr(verification, "_run_math_verify", recording)
    monkeypatch.setattr(
        verification, "_CACHE", type(verification._CACHE)()
    )  # an empty cache: every pair needs math-verify
    completions = ["\\boxed{\\frac{1}{2}+x}"] * 6 + ["\\boxed{\\frac{1}{3}+x}"] * 2
    assert accuracy_reward(completions, ["x+0.5"] * 8) == [1.0] * 6 + [0.0] * 2
    assert len(sent) == 1 and len(sent[0]) == 2 and len(set(sent[0])) == 2

    # A timed-out pair counts once per row that asked for it, as if each row had been checked on its own.
    verification._warm_up_pool(1)
    before = verification.timeout_count()
    assert accuracy_reward([SLOW_COMPLETION] * 3, ["1"] * 3, timeout_seconds=1.0) == [0.0] * 3
    assert len(sent[-1]) == 1
    assert verification.timeout_count() == before + 3


def test_worker_thread_with_slow_expression_is_bounded():
    verification._warm_up_pool()
    calls = []
    completions = [SLOW_COMPLETION, "\\boxed{\\frac{2}{4}}", [{"role": "assistant", "content": "\\boxed{2\\sqrt{2}}"}]]
    golds = ["1", "0.5", "\\sqrt{8}"]

    def call():
        return accuracy_reward(
            completions, golds, timeout_seconds=1.0, log_metric=lambda name, value: calls.append((name, value))
        )

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as executor:
        futures = [executor.submit(call) for _ in range(2)]
        results = [future.result(timeout=60) for future in futures]
    elapsed = time.monotonic() - start
    assert results == [[0.0, 1.0, 1.0]] * 2
    assert sorted(calls) == [("rewards/accuracy_reward/timeouts", 1.0)] * 2
    # Two calls, each with one 1 s timeout, on at least one helper: at most two timeouts back to back.
    assert elapsed < 2 * 1.0 + 2 * TIMING_MARGIN_S


def test_verify_answer_from_threads():
    golds = [f"\\frac{{{k}}}{{{2 * k}}}" for k in range(1, 9)]
    with ThreadPoolExecutor(max_workers=4) as executor:
        results = list(executor.map(lambda gold: verify_answer("\\boxed{0.5}", gold), golds))
    assert results == [True] * len(golds)


def _verify_in_child(queue):
    queue.put(
        (
            verify_answer("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),
            verify_answer(SLOW_COMPLETION, "1", timeout_seconds=1.0),
            verification.timeout_count(),
        )
    )


@pytest.mark.skipif(sys.platform != "linux", reason="uses the fork start method")
def test_forked_process_gets_its_own_helpers():
    verification._warm_up_pool(1)  # the parent has live helpers that the child must not talk to
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_verify_in_child, args=(queue,))
    child.start()
    try:
        equal, slow, child_timeouts = queue.get(timeout=60)
    finally:
        child.join(timeout=10)
    assert (equal, slow) == (True, False)
    assert child_timeouts >= 1
    assert verify_answer("\\boxed{\\sqrt{12}}", "2\\sqrt{3}")  # the parent's helpers still answer correctly


def test_accuracy_reward_formats_and_log_metric():
    calls = []
    completions = [
        "so the answer is \\boxed{3}",
        [{"role": "assistant", "content": "so the answer is \\boxed{3}"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "so the answer is \\boxed{3}"}]}],
        [{"role": "assistant", "content": "\\boxed{4}"}],
        "no answer",
    ]
    rewards_out = accuracy_reward(
        completions, ["3", "\\boxed{3}", "3", "3", "3"], log_metric=lambda name, value: calls.append((name, value))
    )
    assert rewards_out == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert calls == [("rewards/accuracy_reward/timeouts", 0.0)]
    # Extra trainer columns (and a non-callable log_metric) are ignored.
    assert accuracy_reward(["\\boxed{1}"], ["1"], trainer_state=None, prompts=["q"], log_metric=None) == [1.0]
    with pytest.raises(ValueError):
        accuracy_reward(["\\boxed{1}"], ["1", "2"])


def test_format_reward():
    completions = [
        "\\boxed{1}",
        "no box",
        "\\boxed{}",
        "\\boxed{\\frac{1}{2",
        [{"role": "assistant", "content": "<think>\nhmm\n</think>\n\\boxed{x}"}],
    ]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 0.0, 1.0]


# Gold answers that math-verify itself cannot parse (math-verify 0.9.0), so that only the normalised string comparison
# can match them. They still self-verify; a model answer in another form than the gold's is scored 0 for them.
MATH_VERIFY_UNPARSEABLE_GOLDS = {
    "Minerva.json": {
        "np.arcsin(10/13)": "Python code, not mathematics",
        "-1./3": "Python float syntax",
        "-3./2": "Python float syntax",
        "\\frac{dM}{dt}=\\frac{10^{5} L_{\\odot}}{0.007 c^{2} M_{\\odot}^{6}} M^{6}": "\\odot subscripts",
        "\\hbar \\omega(v+1 / 2)-\\frac{E_{0}^{2} e^{2}}{2 m \\omega^{2}}": "E_{0} (E is read as Euler's number)",
        "\\frac{1}{3} E_{1}+\\frac{2}{3} E_{2}": "E_{1} (E is read as Euler's number)",
        "E_{1},E_{2}": "E_{1} (E is read as Euler's number)",
    },
    "Olympiad-Bench.json": {
        "$m_{\\max }=n^{2}-n-1$": "\\max in a subscript",
        "$t(0,4]$": "garbled gold (a stray `t` before an interval)",
    },
}


@pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"benchmark sets not found at {BENCHMARKS}")
@pytest.mark.parametrize("name", ["MATH-500.json", "AIME24.json", "AMC23.json", "Minerva.json", "Olympiad-Bench.json"])
def test_benchmark_gold_answers_self_verify(name):
    golds = [row["answer"] for row in json.loads((BENCHMARKS / name).read_text())]
    completions = ["After some work we find ... \\boxed{" + strip_boxed(gold) + "}" for gold in golds]
    scores = accuracy_reward(completions, golds)
    failures = [gold for gold, score in zip(golds, scores) if score != 1.0]
    assert failures == []

    # The string comparison settles the line above; also check that math-verify alone (the step that grades answers
    # written differently from the gold) accepts each gold, apart from the known exceptions.
    tasks = [(strip_boxed(gold), strip_boxed(gold)) for gold in golds]
    results = verification._run_math_verify(tasks, timeout_seconds=10.0)
    unparseable = sorted({gold for gold, (equal, _) in zip(golds, results) if not equal})
    known = MATH_VERIFY_UNPARSEABLE_GOLDS.get(name, {})
    assert set(unparseable) <= set(known), f"new golds math-verify cannot match: {set(unparseable) - set(known)}"
    assert len(unparseable) <= len(known)
