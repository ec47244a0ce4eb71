"""Tests of the evaluation harness (`hpt_trl.evaluation`): metrics, loaders, grading, backends, the CLI and resume."""

import importlib.util
import itertools
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from hpt_trl.evaluation import (
    BENCHMARKS,
    BenchmarkError,
    EvalConfig,
    EvaluationError,
    Generation,
    SamplingConfig,
    evaluate,
    extract_answer_is,
    extract_choice,
    grade_completions,
    grade_with_checks,
    import_vllm,
    load_benchmark,
    main,
    pass_at_k,
    pass_at_k_budgets,
    render_prompt,
    summarize_records,
    transformers_generate_kwargs,
    vllm_sampling_kwargs,
)
from hpt_trl.evaluation.harness import RECORDS_FILE, read_records_file


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "benchmarks"
ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
FIXTURE_COUNTS = {
    "aime24": 3,
    "aime25": 2,
    "amc23": 4,
    "math500": 3,
    "minerva": 2,
    "olympiadbench": 2,
    "gpqa_diamond": 2,
    "arc_c": 3,
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from hpt_trl.builtin_task.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def char_tokenizer():
    from hpt_trl.builtin_task.tiny_model import build_char_tokenizer

    return build_char_tokenizer()


# ----------------------------------------------------------------------------------------------------------------------
# pass@k
# ----------------------------------------------------------------------------------------------------------------------


def _enumerated_pass_at_k(n: int, c: int, k: int) -> Fraction:
    subsets = list(itertools.combinations(range(n), k))
    # Samples 0..c-1 are the correct ones; pass@k is the share of k-subsets holding at least one.
    return Fraction(sum(1 for subset in subsets if min(subset) < c), len(subsets))


def test_pass_at_k_matches_exact_enumeration():
    checked = 0
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = _enumerated_pass_at_k(n, c, k)
                assert pass_at_k(n, c, k) == pytest.approx(float(expected), abs=1e-12), (n, c, k)
                checked += 1
    assert checked == sum(n * (n + 1) for n in range(1, 11))


@pytest.mark.parametrize("n", [16, 64, 257, 1024, 4096])
def test_pass_at_k_matches_exact_binomials_for_large_n(n):
    for c in sorted({0, 1, 2, 3, n // 7, n // 2, n - 3, n - 1, n}):
        for k in sorted({1, 2, 3, 5, n // 3, n // 2, n - c, n - c + 1, n - 1, n} & set(range(1, n + 1))):
            exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
            assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_is_bounded_and_monotone_at_n_1024():
    n = 1024
    for c in [0, 1, 2, 5, 10, 100, 333, 512, 1000, 1022, 1023, 1024]:
        values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
        assert all(b >= a for a, b in zip(values, values[1:])), f"pass@k decreases in k for c={c}"
        assert values[0] == pytest.approx(c / n, abs=1e-12)
        assert values[-1] == (1.0 if c > 0 else 0.0)
    assert pass_at_k(n, 0, 1024) == 0.0
    assert pass_at_k(n, n, 1) == 1.0
    assert 0.0 < pass_at_k(n, 1, 512) < 1.0


@pytest.mark.parametrize(
    "n, c, k, error",
    [(0, 0, 1, ValueError), (4, 5, 1, ValueError), (4, -1, 1, ValueError), (4, 2, 0, ValueError)]
    + [(4, 2, 5, ValueError), (4.0, 2, 1, TypeError), (4, 2, True, TypeError)],
)
def test_pass_at_k_rejects_bad_input(n, c, k, error):
    with pytest.raises(error):
        pass_at_k(n, c, k)


def test_pass_at_k_budgets():
    assert pass_at_k_budgets(1) == [1]
    assert pass_at_k_budgets(8) == [1, 2, 4, 8]
    assert pass_at_k_budgets(12) == [1, 2, 4, 8, 12]
    assert pass_at_k_budgets(1024) == [2**e for e in range(11)]


def test_summarize_records():
    records = [
        {"n": 4, "num_correct": 0, "response_lengths": [10, 20, 30, 40], "truncated": [False, False, False, True]},
        {"n": 4, "num_correct": 2, "response_lengths": [1, 1, 1, 1], "truncated": [False] * 4},
        {"n": 4, "num_correct": 4, "response_lengths": [5, 5, 5, 5], "truncated": [True] * 4},
    ]
    summary = summarize_records(records, num_problems=4)
    assert summary["avg_at_n"] == pytest.approx((0 + 0.5 + 1) / 3)
    assert summary["pass_at_k"]["1"] == pytest.approx(summary["avg_at_n"])
    assert summary["pass_at_k"]["2"] == pytest.approx((0 + (1 - 1 / 6) + 1) / 3)
    assert summary["pass_at_k"]["4"] == pytest.approx(2 / 3)
    assert summary["mean_response_length"] == pytest.approx((100 + 4 + 20) / 12)
    assert summary["truncated_rate"] == pytest.approx(5 / 12)
    assert summary["complete"] is False
    with pytest.raises(ValueError, match="different sample counts"):
        summarize_records(records + [{"n": 2, "num_correct": 1, "response_lengths": [1, 1], "truncated": [0, 0]}])


# ----------------------------------------------------------------------------------------------------------------------
# Grading
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("so the answer is \\boxed{C}", "C"),
        ("\\boxed{(B)}", "B"),
        ("\\boxed{\\text{D}}", "D"),
        ("\\boxed{\\textbf{(A)}}", "A"),
        ("\\boxed{C) Planetary days will become shorter.}", "C"),
        ("First \\boxed{A}, but on reflection \\boxed{D}", "D"),
        ("Therefore, the answer is (B).", "B"),
        ("The correct answer is: **C**", "C"),
        ("Answer: D", "D"),
        ("The answer is 2.", "2"),
        ("The answer is (A). Wait, no: the answer is (C)", "C"),
        ("The answer is a planet with high density.", None),
        ("Option A is wrong and so is option B.", None),
        ("\\boxed{12}", None),
        ("no choice at all", None),
    ],
)
def test_extract_choice(completion, expected):
    assert extract_choice(completion) == expected


# A response per grading check of the paper protocol (DeepMath uni_eval.py), for a problem whose gold answer is 9.
FALLBACK_CASES = [
    # (response, boxed_only verdict, with_fallbacks (verdict, extracted, matched_by))
    ("so \\boxed{9}", True, (True, "9", "boxed")),
    ("Thus 4+5.\nThe answer is: 9", False, (True, "9", "answer_is")),
    ("The answer is: $9$.", False, (True, "$9$.", "answer_is")),
    # A wrong box still gets the fallbacks, as in uni_eval.py (its checks are or-ed).
    ("\\boxed{8}\nThe answer is: 9", False, (True, "9", "answer_is")),
    # No box and no "The answer is: " on the last line: math-verify reads the whole text.
    ("Adding them gives $4+5=9$.", False, (True, None, "whole_text")),
    ("The answer is: 9\nLet me double check: that is right.", False, (True, None, "whole_text")),
    ("\\boxed{8}", False, (False, "8", None)),
    ("Adding them gives $4+5=10$.", False, (False, None, None)),
]


def test_extract_answer_is_reads_the_last_line_only():
    assert extract_answer_is("Work.\nThe answer is: 42") == "42"
    assert extract_answer_is("Work.\nThe answer is: 42\n") == "42"  # `$` also matches before a final newline
    assert extract_answer_is("The answer is: 42\nMore text.") is None
    assert extract_answer_is("the answer is: 42") is None  # case-sensitive, as uni_eval.py
    assert extract_answer_is("The answer is 42") is None  # the colon is part of the phrase
    assert extract_answer_is("The answer is:  ") is None


def test_each_grading_check_of_the_paper_protocol():
    aime = load_benchmark("aime24", data_dir=FIXTURES)[0]
    assert aime.answer == "9"
    texts = [text for text, _, _ in FALLBACK_CASES]
    with_fallbacks = grade_with_checks(aime, texts, grading="with_fallbacks")
    boxed_only = grade_with_checks(aime, texts, grading="boxed_only")
    for (text, boxed_ok, expected), got, got_boxed in zip(FALLBACK_CASES, with_fallbacks, boxed_only):
        assert got == expected, text
        assert got_boxed[0] is boxed_ok and got_boxed[2] == ("boxed" if boxed_ok else None), text
    # The default stays the training reward's boxed-only grading.
    assert [ok for ok, _ in grade_completions(aime, texts)] == [ok for _, ok, _ in FALLBACK_CASES]
    # Multiple choice is graded by the chosen label under both gradings.
    arc = load_benchmark("arc_c", data_dir=FIXTURES)[1]
    assert grade_with_checks(arc, ["\\boxed{2}", "\\boxed{3}"], grading="with_fallbacks") == [
        (True, "2", "choice"),
        (False, "3", None),
    ]
    with pytest.raises(ValueError, match="Unknown --grading 'lenient'"):
        grade_with_checks(aime, texts, grading="lenient")


def test_grade_completions_math_and_multiple_choice():
    aime = load_benchmark("aime24", data_dir=FIXTURES)[0]
    assert aime.answer == "9"  # the fixture's gold is boxed; one box is stripped
    graded = grade_completions(aime, ["so \\boxed{9}", "\\boxed{8}", "9 without a box", "\\boxed{9.0}"])
    assert graded == [(True, "9"), (False, "8"), (False, None), (True, "9.0")]

    arc = load_benchmark("arc_c", data_dir=FIXTURES)
    assert [p.answer for p in arc] == ["B", "2", "C"]
    assert grade_completions(arc[1], ["\\boxed{2}", "The answer is 3", "\\boxed{B}"]) == [
        (True, "2"),
        (False, "3"),
        (False, "B"),
    ]


# ----------------------------------------------------------------------------------------------------------------------
# Benchmark loaders
# ----------------------------------------------------------------------------------------------------------------------


def test_fixture_benchmarks_load_with_the_shared_schemas():
    for key, count in FIXTURE_COUNTS.items():
        problems = load_benchmark(key, data_dir=FIXTURES)
        assert len(problems) == count, key
        assert all(p.prompt and p.answer and "\\boxed" not in p.answer for p in problems)
        assert [p.index for p in problems] == list(range(count))
        assert problems[0].kind == BENCHMARKS[key].kind
    math500 = load_benchmark("MATH-500", data_dir=FIXTURES)
    assert math500[0].problem_id == "test/precalculus/fixture-1.json"
    arc = load_benchmark("ARC-c", data_dir=FIXTURES)
    # ARC-c rows are chat messages: the user turn is the problem, the system turn is kept aside (and unused).
    assert arc[0].prompt.startswith("Which of these is a mammal?") and "A) Shark" in arc[0].prompt
    assert arc[0].system_prompt is not None and "\\boxed" in arc[0].system_prompt
    assert len(load_benchmark("amc23", data_dir=FIXTURES, limit=2)) == 2


def test_local_files_in_other_formats_and_explicit_paths(tmp_path):
    rows = [{"problem": "What is $1+1$?", "expected_answer": "2"}, {"question": "And $2+2$?", "final_answer": ["4"]}]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    problems = load_benchmark("amc23", path=jsonl)
    assert [(p.prompt, p.answer) for p in problems] == [("What is $1+1$?", "2"), ("And $2+2$?", "4")]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{"prompt": "Compute $3 \\cdot 3$.", "answer": "\\boxed{9}"}]), tmp_path / "x.parquet"
    )
    assert load_benchmark("aime25", path=tmp_path / "x.parquet")[0].answer == "9"

    # The authors' repository layout, `<name>/test.json`, is found too.
    (tmp_path / "layout" / "Minerva").mkdir(parents=True)
    (tmp_path / "layout" / "Minerva" / "test.json").write_text(json.dumps([{"prompt": "p", "answer": "1"}]))
    assert len(load_benchmark("minerva", data_dir=tmp_path / "layout")) == 1


def test_eval_config_expands_a_home_relative_model_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    config = EvalConfig(model="~/ckpt", benchmarks=["amc23"], data_dir=str(FIXTURES), backend="transformers")
    assert config.model == str(tmp_path / "ckpt")  # transformers would read "~/ckpt" as a Hub id
    with pytest.raises(EvaluationError, match="does not exist"):
        EvalConfig(model="~/missing", benchmarks=["amc23"], backend="transformers")


def test_a_folder_without_a_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="folder without config.json, so it is not a model checkpoint"):
        EvalConfig(model=str(tmp_path / "empty"), benchmarks=["amc23"], backend="transformers")


def test_remote_benchmarks_name_the_extra_they_need(monkeypatch):
    import importlib.util

    from hpt_trl.evaluation import benchmarks

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "aiohttp" else real_find_spec(name))

    def http_filesystem_without_aiohttp(*args, **kwargs):
        raise ImportError("HTTPFileSystem requires 'requests' and 'aiohttp' to be installed")

    monkeypatch.setattr("datasets.load_dataset", http_filesystem_without_aiohttp)
    with pytest.raises(BenchmarkError, match=r"needs aiohttp.*hpt-trl\[eval\]"):
        benchmarks.load_benchmark("aime24")
    extras = (ROOT / "pyproject.toml").read_text()
    assert 'eval = ["requests>=2.31", "aiohttp>=3.9"]' in extras


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(BenchmarkError, match="Unknown benchmark 'aime26'.*aime24, aime25.*arc_c"):
        load_benchmark("aime26", data_dir=FIXTURES)
    with pytest.raises(BenchmarkError, match="No file for benchmark AIME24.*AIME24.json"):
        load_benchmark("aime24", data_dir=tmp_path)
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_benchmark("aime24", path=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "What is 1+1?"}]))
    with pytest.raises(BenchmarkError, match="row 0 has no gold answer.*answer"):
        load_benchmark("amc23", path=bad)
    bad.write_text(json.dumps([{"text": "What is 1+1?", "answer": "2"}]))
    with pytest.raises(BenchmarkError, match="row 0 has no problem text.*prompt"):
        load_benchmark("amc23", path=bad)
    with pytest.raises(BenchmarkError, match="`limit` must be >= 1"):
        load_benchmark("amc23", data_dir=FIXTURES, limit=0)
    bad.write_text('[{"prompt": "What is 1+1?", ')
    with pytest.raises(BenchmarkError, match=r"bad.json' could not be read as a benchmark file"):
        load_benchmark("amc23", path=bad)
    # A JSON object that wraps the list of problems is read too.
    bad.write_text(json.dumps({"problems": [{"prompt": "What is 1+1?", "answer": "2"}]}))
    assert [p.answer for p in load_benchmark("amc23", path=bad)] == ["2"]


def test_remote_loaders_call_load_dataset(monkeypatch):
    """The authors'-file and Hub paths cannot reach the network here: check what they ask `load_dataset` for."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, data_files=None, **kwargs):
        calls.append((path, name, split, data_files))
        if path == "allenai/ai2_arc":
            rows = [
                {
                    "id": "Mercury_1",
                    "question": "Which is a liquid at room temperature?",
                    "choices": {"text": ["iron", "water", "salt"], "label": ["A", "B", "C"]},
                    "answerKey": "B",
                }
            ]
        elif path == "zwhe99/simplerl-OlympiadBench":
            rows = [{"question": "Compute $2+2$.", "final_answer": ["$4$"]}]
        else:
            rows = [{"prompt": "Compute $1+1$.", "answer": "\\boxed{2}"}]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)

    problem = load_benchmark("aime24")[0]
    assert (problem.prompt, problem.answer) == ("Compute $1+1$.", "2")
    assert calls[-1][0] == "json" and "TsinghuaC3I/Unify-Post-Training" in calls[-1][3]["test"]
    assert calls[-1][3]["test"].endswith("/data/AIME24/test.json")
    load_benchmark("arc_c")
    assert calls[-1][0] == "parquet" and calls[-1][3]["test"].endswith("valid.arc_c.parquet")

    arc = load_benchmark("arc_c", source="hub")[0]
    assert calls[-1][:3] == ("allenai/ai2_arc", "ARC-Challenge", "test")
    assert arc.prompt == "Which is a liquid at room temperature?\n\nA) iron\nB) water\nC) salt\n"
    assert (arc.answer, arc.problem_id, arc.kind) == ("B", "Mercury_1", "multiple_choice")
    olympiad = load_benchmark("olympiadbench", source="hub")[0]
    assert calls[-1][:3] == ("zwhe99/simplerl-OlympiadBench", None, "test")
    assert olympiad.answer == "$4$"

    with pytest.raises(BenchmarkError, match="--source local needs --data_dir"):
        load_benchmark("aime24", source="local")


@pytest.mark.skipif(
    not SHARED_BENCHMARKS.is_dir(), reason=f"the shared benchmark files are not at {SHARED_BENCHMARKS}"
)
def test_real_benchmark_files_load_and_every_gold_answer_self_verifies():
    """Load the paper's real sets and grade each gold answer against itself (must pass) and a wrong one (must fail)."""
    expected_counts = {
        "aime24": 30,
        "aime25": 30,
        "amc23": 40,
        "math500": 500,
        "minerva": 272,
        "olympiadbench": 674,
        "gpqa_diamond": 198,
        "arc_c": 1172,
    }
    # Gold answers the verifier cannot match against themselves, as {(benchmark, index): why}. None at the moment:
    # every gold of the eight sets verifies (checked with hpt_trl.rewards at the time of writing).
    known_exceptions: dict[tuple[str, int], str] = {}

    self_failures, wrong_accepted = [], []
    for key, count in expected_counts.items():
        problems = load_benchmark(key, data_dir=SHARED_BENCHMARKS)
        assert len(problems) == count == BENCHMARKS[key].num_problems, key
        for problem in problems:
            if problem.kind == "multiple_choice":
                labels = "1234" if problem.answer.isdigit() else "ABCD"
                assert problem.answer in labels, (key, problem.index, problem.answer)
                wrong = next(label for label in labels if label != problem.answer)
            else:
                try:
                    wrong = str(int(problem.answer.replace(",", "")) + 1)
                except ValueError:
                    wrong = "-987654.321"
            right_ok, wrong_ok = (
                ok
                for ok, _ in grade_completions(
                    problem,
                    [f"So the answer is \\boxed{{{problem.answer}}}.", f"So the answer is \\boxed{{{wrong}}}."],
                )
            )
            if not right_ok:
                self_failures.append((key, problem.index, problem.answer))
            if wrong_ok:
                wrong_accepted.append((key, problem.index, problem.answer, wrong))
    assert sorted((key, index) for key, index, _ in self_failures) == sorted(known_exceptions), self_failures
    assert len(self_failures) == len(known_exceptions) == 0
    assert wrong_accepted == []


# ----------------------------------------------------------------------------------------------------------------------
# Prompts and sampling arguments
# ----------------------------------------------------------------------------------------------------------------------


def test_render_prompt_templates(char_tokenizer):
    text, ids = render_prompt("What is 1+1?", char_tokenizer, "chat")
    assert text == "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert ids == char_tokenizer(text, add_special_tokens=False)["input_ids"]

    text, _ = render_prompt("What is 1+1?", char_tokenizer, "chat", instruction="Box it.", system_prompt="Be brief.")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1+1?\n\nBox it.")

    # The authors' Llama-3.1-8B prompt: train_llama.sh's zero_temp, with its suffix_prompt appended to the problem.
    text, ids = render_prompt("What is 1+1?", char_tokenizer, "llama")
    assert text == (
        "Question:\nWhat is 1+1?\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
        "Answer:\nLet's think step by step."
    )
    assert ids == char_tokenizer(text)["input_ids"]
    # The problem is used as it is, as in training (the authors strip nothing).
    assert render_prompt(" What is 1+1?\n", char_tokenizer, "llama")[0].startswith(
        "Question:\n What is 1+1?\n\nPlease"
    )
    assert render_prompt("What is 1+1?", char_tokenizer, "none")[0] == "What is 1+1?"

    with pytest.raises(ValueError, match="Unknown --template"):
        render_prompt("x", char_tokenizer, "alpaca")
    original = char_tokenizer.chat_template
    try:
        char_tokenizer.chat_template = None
        with pytest.raises(ValueError, match="--template llama or --template none"):
            render_prompt("x", char_tokenizer, "chat")
    finally:
        char_tokenizer.chat_template = original


def test_sampling_argument_mapping():
    paper = SamplingConfig()
    assert (paper.n, paper.temperature, paper.top_p, paper.max_new_tokens) == (8, 0.6, 0.95, 8192)
    assert vllm_sampling_kwargs(paper, seed=7) == {
        "n": 8,
        "temperature": 0.6,
        "top_p": 0.95,
        "max_tokens": 8192,
        "seed": 7,
    }
    assert transformers_generate_kwargs(paper) == {
        "max_new_tokens": 8192,
        "num_return_sequences": 8,
        "repetition_penalty": 1.0,
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 0,
    }
    top_k = SamplingConfig(n=4, top_k=20, max_new_tokens=16)
    assert vllm_sampling_kwargs(top_k)["top_k"] == 20 and "seed" not in vllm_sampling_kwargs(top_k)
    assert transformers_generate_kwargs(top_k)["top_k"] == 20

    greedy = SamplingConfig(n=4, temperature=0.0, top_k=20, max_new_tokens=16)
    assert greedy.distinct_samples == 1
    assert vllm_sampling_kwargs(greedy) == {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 16}
    hf_greedy = transformers_generate_kwargs(greedy)
    assert hf_greedy["do_sample"] is False and hf_greedy["num_return_sequences"] == 1

    for bad, match in [
        ({"n": 0}, "`n`"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ]:
        with pytest.raises(ValueError, match=match):
            SamplingConfig(**bad)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_sampling_kwargs_are_accepted_by_vllm():
    vllm = import_vllm()
    for sampling in [SamplingConfig(), SamplingConfig(temperature=0.0, n=4), SamplingConfig(top_k=20)]:
        vllm.SamplingParams(**vllm_sampling_kwargs(sampling, seed=1))


def test_missing_vllm_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'hpt-trl\[vllm\]'"):
        import_vllm()
    args = ["--model", "Org/some-model", "--benchmarks", "aime24", "--data_dir", str(FIXTURES)]
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--output_dir", str(tmp_path / "out"), "--no_progress"])
    assert exit_info.value.code == 2
    assert "pip install 'hpt-trl[vllm]'" in capsys.readouterr().err


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _vllm_skip_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (it is CUDA-only: `pip install 'hpt-trl[vllm]'` on a GPU machine)"
    if not _cuda_available():
        return "the vLLM backend needs a CUDA GPU and none is visible"
    return None


@pytest.mark.skipif(_vllm_skip_reason() is not None, reason=_vllm_skip_reason() or "")
def test_vllm_backend_end_to_end(tmp_path):
    from hpt_trl.builtin_task.tiny_model import save_tiny_model
    from hpt_trl.evaluation import VLLMBackend

    # Heads of 64 dimensions: vLLM's attention kernels do not take the default tiny model's 8.
    model = save_tiny_model(tmp_path / "model", hidden_size=256, intermediate_size=512)
    backend = VLLMBackend(str(model), gpu_memory_utilization=0.2, max_model_len=512, dtype="float32")
    _, ids = render_prompt("What is 1+1?", backend.tokenizer, "chat")
    sampling = SamplingConfig(n=3, max_new_tokens=8)
    outputs = backend.generate([ids, ids], sampling, seeds=[0, 1])
    assert [len(gens) for gens in outputs] == [3, 3]
    for generation in (g for gens in outputs for g in gens):
        assert 1 <= generation.num_tokens <= 8
        if generation.truncated:
            assert generation.num_tokens == 8
    again = backend.generate([ids], sampling, seeds=[0])
    assert [g.text for g in again[0]] == [g.text for g in outputs[0]]  # per-problem seeds make samples reproducible
    greedy = backend.generate([ids], SamplingConfig(n=2, temperature=0.0, max_new_tokens=8), seeds=[0])[0]
    assert greedy[0].text == greedy[1].text

    config = EvalConfig(
        model=str(model),
        benchmarks=["aime24", "gpqa"],
        data_dir=str(FIXTURES),
        output_dir=str(tmp_path / "out"),
        n=2,
        max_new_tokens=8,
        plot=False,
    )
    results = evaluate(config, backend=backend, progress=False)
    assert results["scores"]["AIME24"]["num_problems"] == 3


def test_transformers_backend_lengths_truncation_padding_and_seeds(tiny_model):
    import torch

    from hpt_trl.evaluation import TransformersBackend

    backend = TransformersBackend(str(tiny_model), device="cpu")
    tokenizer = backend.tokenizer
    # The random tiny model's logits are nearly flat and its greedy output is one repeated token; scaled-up weights
    # make greedy continuations vary with the prompt, so the checks below can tell positions and prompts apart.
    with torch.no_grad():
        for parameter in backend.model.parameters():
            parameter.mul_(8)
    _, short = render_prompt("1+1?", tokenizer, "chat")
    _, long = render_prompt("What is the sum of the first ten positive integers?", tokenizer, "chat")
    greedy = SamplingConfig(n=2, temperature=0.0, max_new_tokens=8)

    # What the model writes greedily, straight from `generate` (no EOS stop, so all 8 tokens).
    with torch.no_grad():
        raw = backend.model.generate(
            torch.tensor([short]), do_sample=False, max_new_tokens=8, eos_token_id=None, pad_token_id=0
        )[0, len(short) :].tolist()
    assert len(raw) == 8

    # No EOS in the greedy continuation: truncated, all 8 tokens counted, and the greedy sample repeated n times.
    backend.eos_token_ids = sorted(set(range(len(tokenizer))) - set(raw))[:1]
    outputs = backend.generate([short], greedy, seeds=[0])[0]
    assert [(g.num_tokens, g.truncated) for g in outputs] == [(8, True), (8, True)]
    assert outputs[0].text == outputs[1].text == tokenizer.decode(raw, skip_special_tokens=True)

    # Make the token at position p the EOS: the response stops there, counts p + 1 tokens and is not truncated.
    position = next(i for i in range(1, 8) if raw[i] not in raw[:i])
    backend.eos_token_ids = [raw[position]]
    stopped = backend.generate([short], greedy, seeds=[0])[0][0]
    assert (stopped.num_tokens, stopped.truncated) == (position + 1, False)
    assert stopped.text == tokenizer.decode(raw[:position], skip_special_tokens=True)

    # Left padding: a short prompt batched with a long one is continued exactly as on its own.
    backend.eos_token_ids = [tokenizer.eos_token_id]
    alone = backend.generate([short], greedy, seeds=[0])[0][0].text
    batched = backend.generate([long, short], greedy, seeds=[0])
    assert batched[1][0].text == alone

    # Sampling: the same seed gives the same samples, and the trainer-visible RNG is left alone.
    sampling = SamplingConfig(n=3, max_new_tokens=6)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = [g.text for g in backend.generate([short, long], sampling, seeds=[5, 6])[1]]
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [g.text for g in backend.generate([short, long], sampling, seeds=[5, 6])[1]] == first


# ----------------------------------------------------------------------------------------------------------------------
# The harness end to end
# ----------------------------------------------------------------------------------------------------------------------


def _check_results_consistency(results: dict, output_dir: Path, max_new_tokens: int):
    stored = json.loads((output_dir / "results.json").read_text())
    assert stored["scores"] == results["scores"]
    for name, score in results["scores"].items():
        records = results["records"][name]
        n = score["n"]
        assert score["num_problems"] == len(records)
        assert [r["index"] for r in records] == sorted(r["index"] for r in records)
        for record in records:
            assert record["n"] == n == len(record["correct"]) == len(record["response_lengths"])
            assert record["num_correct"] == sum(record["correct"])
            for length, truncated in zip(record["response_lengths"], record["truncated"]):
                assert 1 <= length <= max_new_tokens
                if truncated:
                    assert length == max_new_tokens
        assert score["avg_at_n"] == pytest.approx(sum(r["num_correct"] for r in records) / (n * len(records)))
        for k, value in score["pass_at_k"].items():
            expected = sum(pass_at_k(n, r["num_correct"], int(k)) for r in records) / len(records)
            assert value == pytest.approx(expected)
        lengths = [length for r in records for length in r["response_lengths"]]
        assert score["mean_response_length"] == pytest.approx(sum(lengths) / len(lengths))
        flags = [flag for r in records for flag in r["truncated"]]
        assert score["truncated_rate"] == pytest.approx(sum(flags) / len(flags))


def test_cli_end_to_end_with_the_tiny_model(tiny_model, tmp_path, capsys):
    output_dir = tmp_path / "run"
    args = ["--model", str(tiny_model), "--backend", "transformers", "--data_dir", str(FIXTURES)]
    args += ["--benchmarks", "aime24", "gpqa", "arc_c", "--n", "2", "--max_new_tokens", "8", "--batch_size", "2"]
    assert main(args + ["--output_dir", str(output_dir), "--no_progress"]) == 0
    stdout = capsys.readouterr().out

    assert "| Benchmark | Problems | avg@2 | pass@1 | pass@2 | Mean length | Truncated (%) |" in stdout
    for name in ("AIME24", "GPQA-diamond", "ARC-c"):
        assert f"| {name} |" in stdout
    assert (output_dir / "results.md").read_text().strip() in stdout
    assert (output_dir / "pass_at_k.png").stat().st_size > 0

    results = json.loads((output_dir / "results.json").read_text())
    assert results["config"]["backend"] == "transformers" and results["config"]["n"] == 2
    assert {name: s["num_problems"] for name, s in results["scores"].items()} == {
        "AIME24": 3,
        "GPQA-diamond": 2,
        "ARC-c": 3,
    }
    _check_results_consistency(results, output_dir, max_new_tokens=8)
    lines = read_records_file(output_dir / RECORDS_FILE)
    assert len(lines) == 8
    # The real chat template of the checkpoint was applied: one user turn and the generation prompt.
    assert all(r["prompt"].startswith("<|im_start|>user\n") for r in lines)
    assert all(r["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n") for r in lines)
    assert all(len(r["completions"]) == 2 for r in lines)


class CountingBackend:
    """Wraps a backend and remembers which prompts it was asked to generate for."""

    def __init__(self, backend):
        self.backend = backend
        self.name = backend.name
        self.tokenizer = backend.tokenizer
        self.prompts: list[str] = []

    def generate(self, prompt_ids, sampling, seeds):
        self.prompts += [self.tokenizer.decode(ids) for ids in prompt_ids]
        return self.backend.generate(prompt_ids, sampling, seeds)


def test_resume_with_the_real_backend_generates_only_missing_problems(tiny_model, tmp_path):
    from hpt_trl.evaluation import TransformersBackend

    backend = CountingBackend(TransformersBackend(str(tiny_model)))
    base = dict(
        model=str(tiny_model),
        backend="transformers",
        benchmarks=["amc23"],
        data_dir=str(FIXTURES),
        output_dir=str(tmp_path / "run"),
        n=2,
        max_new_tokens=6,
        batch_size=1,
        plot=False,
    )
    first = evaluate(EvalConfig(**base, limit=2), backend=backend, progress=False)
    assert first["scores"]["AMC23"]["num_problems"] == 2
    assert first["scores"]["AMC23"]["complete"] is True  # complete for the limit it was given
    assert len(backend.prompts) == 2
    first_records = read_records_file(tmp_path / "run" / RECORDS_FILE)

    backend.prompts.clear()
    problems = load_benchmark("amc23", data_dir=FIXTURES)
    second = evaluate(EvalConfig(**base), backend=backend, progress=False)
    assert len(backend.prompts) == 2
    assert all(problems[i].prompt in prompt for i, prompt in zip([2, 3], backend.prompts))
    assert second["scores"]["AMC23"]["num_problems"] == 4
    assert read_records_file(tmp_path / "run" / RECORDS_FILE)[:2] == first_records
    _check_results_consistency(second, tmp_path / "run", max_new_tokens=6)

    # A finished run re-reports without generating anything.
    backend.prompts.clear()
    evaluate(EvalConfig(**base), backend=backend, progress=False)
    assert backend.prompts == []


class ScriptedBackend:
    """
    A fake backend that answers each problem with a scripted number of right answers (the rest wrong), so grading and
    the metrics can be checked against known numbers. It can also fail on a given call, to simulate an interruption.
    """

    name = "scripted"

    def __init__(self, tokenizer, problems, num_correct, fail_on_call=None):
        self.tokenizer = tokenizer
        self.problems = problems
        self.num_correct = num_correct  # problem -> number of right answers among the n samples
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.generated_for: list[tuple[str, int]] = []

    @staticmethod
    def _answer(problem, right: bool) -> str:
        if problem.kind == "multiple_choice":
            labels = "1234" if problem.answer.isdigit() else "ABCD"
            choice = problem.answer if right else next(label for label in labels if label != problem.answer)
            return f"Comparing the options, the answer is ({choice})."
        return f"Working it out step by step gives \\boxed{{{problem.answer if right else '-1'}}}."

    def generate(self, prompt_ids, sampling, seeds):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash")
        outputs = []
        for ids in prompt_ids:
            prompt = self.tokenizer.decode(ids)
            problem = next(p for p in self.problems if p.prompt in prompt)
            self.generated_for.append((problem.benchmark, problem.index))
            correct = self.num_correct(problem)
            texts = [self._answer(problem, i < correct) for i in range(sampling.n)]
            outputs.append([Generation(text, num_tokens=len(text), truncated=False) for text in texts])
        return outputs


def test_scripted_answers_give_the_expected_scores_and_resume_after_a_crash(char_tokenizer, tmp_path, capsys):
    problems = load_benchmark("amc23", data_dir=FIXTURES)
    num_correct = [0, 1, 2, 4]
    config = EvalConfig(
        model="Org/scripted-model",
        backend="transformers",
        benchmarks=["amc23"],
        data_dir=str(FIXTURES),
        output_dir=str(tmp_path / "run"),
        n=4,
        batch_size=1,
        plot=False,
    )
    script = lambda problem: num_correct[problem.index]  # noqa: E731
    crashing = ScriptedBackend(char_tokenizer, problems, script, fail_on_call=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(config, backend=crashing, progress=False)
    assert [r["index"] for r in read_records_file(tmp_path / "run" / RECORDS_FILE)] == [0, 1]
    # A record cut off mid-write by the crash is dropped and its problem generated again.
    with open(tmp_path / "run" / RECORDS_FILE, "a") as file:
        file.write('{"benchmark": "AMC23", "index": 2, "n": 4, "num_cor')

    backend = ScriptedBackend(char_tokenizer, problems, script)
    results = evaluate(config, backend=backend, progress=False)
    assert backend.generated_for == [("AMC23", 2), ("AMC23", 3)]
    score = results["scores"]["AMC23"]
    assert score["num_problems"] == 4 and score["complete"] is True
    assert score["avg_at_n"] == pytest.approx((0 + 1 / 4 + 2 / 4 + 1) / 4)
    assert score["pass_at_k"]["2"] == pytest.approx((0 + 0.5 + 5 / 6 + 1) / 4)
    assert score["pass_at_k"]["4"] == pytest.approx(3 / 4)
    assert score["truncated_rate"] == 0.0
    assert [r["num_correct"] for r in results["records"]["AMC23"]] == num_correct
    assert "| AMC23 | 4 | 43.8 | 43.8 | 58.3 | 75.0 |" in capsys.readouterr().out
    _check_results_consistency(results, tmp_path / "run", max_new_tokens=10**6)

    # A changed setting refuses to resume and names it.
    changed = EvalConfig(**{**config.to_dict(), "n": 8})
    with pytest.raises(EvaluationError, match=r"different settings \(n: 4 there, 8 now\)"):
        evaluate(changed, backend=backend, progress=False)
    changed = EvalConfig(**{**config.to_dict(), "temperature": 1.0, "template": "none"})
    with pytest.raises(EvaluationError, match="template: 'chat' there, 'none' now; temperature: 0.6 there, 1.0 now"):
        evaluate(changed, backend=backend, progress=False)
    # So does a benchmark file whose problems changed.
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps([{"prompt": "A different problem.", "answer": "1"}]))
    moved = EvalConfig(**{**config.to_dict(), "benchmarks": [f"amc23={edited}"]})
    with pytest.raises(EvaluationError, match="AMC23 problem 0 differs"):
        evaluate(moved, backend=backend, progress=False)


def test_multiple_choice_scores_and_compare(char_tokenizer, tmp_path, capsys):
    problems = [p for key in ("gpqa", "aime25", "amc23") for p in load_benchmark(key, data_dir=FIXTURES)]
    scripts = {
        # GPQA: 1 then 0 right of 2; the math problems: none right.
        "sft": lambda p: [1, 0][p.index] if p.benchmark == "GPQA-diamond" else 0,
        # GPQA: 2 then 1 right of 2; the math problems: all right.
        "hpt": lambda p: [2, 1][p.index] if p.benchmark == "GPQA-diamond" else 2,
    }
    runs = {}
    for label, script in scripts.items():
        config = EvalConfig(
            model="Org/scripted-model",
            backend="transformers",
            benchmarks=["gpqa", "aime25", "amc23"],
            data_dir=str(FIXTURES),
            output_dir=str(tmp_path / label),
            n=2,
            plot=False,
        )
        runs[label] = evaluate(config, backend=ScriptedBackend(char_tokenizer, problems, script), progress=False)
    assert runs["sft"]["scores"]["GPQA-diamond"]["avg_at_n"] == pytest.approx(0.25)
    assert runs["hpt"]["scores"]["GPQA-diamond"]["avg_at_n"] == pytest.approx(0.75)
    capsys.readouterr()

    png = tmp_path / "curves.png"
    assert main(["--compare", str(tmp_path / "sft"), str(tmp_path / "hpt" / "results.json"), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    # Both runs evaluated the same model name, so the columns are told apart by their output folders.
    assert "| Benchmark | scripted-model (sft) | scripted-model (hpt) |" in out
    assert "| GPQA-diamond | 25.0 | 75.0 |" in out
    assert "| Avg (2 math) | 0.0 | 100.0 |" in out
    assert png.stat().st_size > 0
    assert main(["--compare", str(tmp_path / "sft"), str(tmp_path / "hpt"), "--metric", "pass@2"]) == 0
    assert "| GPQA-diamond | 50.0 | 100.0 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--compare", str(tmp_path / "nowhere")])
    assert "No results at" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--benchmarks", "aime26"], "Unknown benchmark 'aime26'. Valid names: aime24"),
        (["--n", "0"], "`n` (samples per problem) must be an integer >= 1, got 0"),
        (["--top_p", "1.5"], "`top_p` must be in (0, 1]"),
        (["--data_dir", "/nonexistent/benchmarks"], "--data_dir '/nonexistent/benchmarks' is not a folder"),
        (["--benchmarks", "aime24=/nonexistent/a.json"], "'/nonexistent/a.json' for AIME24 does not exist"),
        (["--limit", "0"], "`limit` must be an integer >= 1"),
        (["--template", "llama", "--system_prompt", "x"], "--system_prompt needs --template chat"),
    ],
)
def test_cli_bad_input_fails_fast_with_a_clear_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "Org/model", "--backend", "transformers", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_flags_are_the_config_fields():
    """hpt-eval's flags are EvalConfig's fields, each with a help text, and argparse's unique prefixes still work."""
    from dataclasses import fields

    from hpt_trl.evaluation.cli import build_parser

    parser = build_parser()
    flags = {action.dest: action for action in parser._actions}
    for config_field in fields(EvalConfig):
        if config_field.name in ("save_completions", "plot", "sampling"):
            continue  # set through --no_completions / --no_plot, or derived
        assert flags[config_field.name].help, config_field.name
    args = parser.parse_args(["--model", "Org/model", "--tensor", "2", "--no_completions", "--top-k", "20"])
    assert (args.tensor_parallel_size, args.no_completions, args.top_k) == (2, True, 20)
    config = EvalConfig(model="Org/model", benchmarks=["aime24"], top_k=20)
    assert config.sampling == SamplingConfig(n=16, temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=32768)


def test_the_package_imports_without_transformers():
    import subprocess

    code = "import sys, hpt_trl.evaluation; assert 'transformers' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cli_requires_a_model(capsys):
    with pytest.raises(SystemExit):
        main(["--benchmarks", "aime24"])
    assert "--model is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "./no/such/checkpoint", "--backend", "transformers"])
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Training callback
# ----------------------------------------------------------------------------------------------------------------------


def test_benchmark_callback_logs_avg_at_n(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState

    from hpt_trl.evaluation import BenchmarkCallback

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model.train()
    callback = BenchmarkCallback("gpqa", eval_steps=2, data_dir=FIXTURES, n=2, max_new_tokens=4, limit=2)
    state, control = TrainerState(), TrainerControl()
    for step in (1, 2):
        state.global_step = step
        callback.on_step_end(None, state, control, model=model, processing_class=tokenizer)
    assert len(state.log_history) == 1
    logged = state.log_history[0]
    assert logged["step"] == 2
    assert 0.0 <= logged["benchmark/GPQA-diamond/avg@2"] <= logged["benchmark/GPQA-diamond/pass@2"] <= 1.0
    assert 1 <= logged["benchmark/GPQA-diamond/mean_response_length"] <= 4
    assert model.training  # the callback restores train mode
    with pytest.raises(ValueError, match="would never run"):
        BenchmarkCallback("gpqa", data_dir=FIXTURES)


def test_benchmark_callback_with_a_trainer_leaves_the_steps_training_metrics_alone(tiny_model):
    """With a trainer, the scores reach its reporters through on_log, not GRPOTrainer.log (which drains its buffers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState

    from hpt_trl.evaluation import BenchmarkCallback

    class Trainer:
        def __init__(self):
            self.reported = []
            self.callback_handler = self
            self._metrics = {"train": {"reward": [0.5]}}

        def on_log(self, args, state, control, logs=None):
            self.reported.append((state.global_step, logs))
            control.should_log = False  # as transformers' CallbackHandler.on_log does

        def log(self, logs):
            raise AssertionError("trainer.log would take the step's buffered training metrics")

    trainer = Trainer()
    callback = BenchmarkCallback(
        "gpqa", eval_steps=1, trainer=trainer, data_dir=FIXTURES, n=2, max_new_tokens=4, limit=2
    )
    state = TrainerState()
    state.global_step = 3
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    control = TrainerControl(should_log=True)  # the step is due to log its training metrics
    callback.on_step_end(None, state, control, model=model, processing_class=AutoTokenizer.from_pretrained(tiny_model))
    assert control.should_log, "logging the scores must not cancel the step's own training log"
    assert trainer._metrics == {"train": {"reward": [0.5]}}
    assert [step for step, _ in trainer.reported] == [3]
    assert "benchmark/GPQA-diamond/avg@2" in trainer.reported[0][1]
    assert state.log_history == [{**trainer.reported[0][1], "step": 3}]


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation protocols
# ----------------------------------------------------------------------------------------------------------------------


def test_protocol_defaults_and_overrides():
    from hpt_trl.evaluation.cli import build_parser

    paper = EvalConfig(model="Org/model", benchmarks=["aime24"])
    assert paper.protocol == "paper"
    assert (paper.n, paper.max_new_tokens, paper.temperature, paper.top_p, paper.grading) == (
        16,
        32768,
        0.6,
        0.95,
        "with_fallbacks",
    )
    validation = EvalConfig(model="Org/model", benchmarks=["aime24"], protocol="validation")
    assert (validation.n, validation.max_new_tokens, validation.temperature, validation.top_p) == (8, 8192, 0.6, 0.95)
    assert validation.grading == "boxed_only"
    assert validation.protocol_record()["overridden"] == []

    # Explicit settings win over the protocol's, and the record says which.
    custom = EvalConfig(model="Org/model", benchmarks=["aime24"], n=4, max_new_tokens=1024, grading="boxed_only")
    assert (custom.n, custom.max_new_tokens, custom.grading, custom.temperature) == (4, 1024, "boxed_only", 0.6)
    record = custom.protocol_record()
    assert record["name"] == "paper" and record["defaults"]["n"] == 16 and record["used"]["n"] == 4
    assert record["overridden"] == ["n", "max_new_tokens", "grading"]
    # A value equal to the protocol's is no override; a copy of a resolved config keeps its values.
    assert EvalConfig(**paper.to_dict()).protocol_record()["overridden"] == []

    # On the command line the flags default to the protocol's values.
    args = build_parser().parse_args(["--model", "Org/model"])
    assert (args.protocol, args.n, args.max_new_tokens, args.grading, args.temperature) == (
        "paper",
        None,
        None,
        None,
        None,
    )
    args = build_parser().parse_args(["--model", "Org/model", "--protocol", "validation", "--n", "2"])
    assert (args.protocol, args.n) == ("validation", 2)

    with pytest.raises(EvaluationError, match="Unknown --protocol 'deepmath'; choose one of paper, validation"):
        EvalConfig(model="Org/model", benchmarks=["aime24"], protocol="deepmath")
    with pytest.raises(EvaluationError, match="Unknown --grading 'lenient'"):
        EvalConfig(model="Org/model", benchmarks=["aime24"], grading="lenient")


class FallbackBackend:
    """Answers every problem with `texts` (one per sample), so the grading of each protocol can be seen in a run."""

    name = "fallback"

    def __init__(self, tokenizer, texts):
        self.tokenizer = tokenizer
        self.texts = texts

    def generate(self, prompt_ids, sampling, seeds):
        assert sampling.n == len(self.texts)
        return [[Generation(text, num_tokens=len(text), truncated=False) for text in self.texts] for _ in prompt_ids]


def test_protocol_is_recorded_and_a_resume_cannot_mix_protocols(char_tokenizer, tmp_path, capsys):
    texts = [text for text, _, _ in FALLBACK_CASES]
    base = dict(
        model="Org/scripted-model",
        backend="transformers",
        benchmarks=["aime24"],
        data_dir=str(FIXTURES),
        n=len(texts),
        limit=1,
        plot=False,
    )
    runs = {}
    for protocol in ("paper", "validation"):
        config = EvalConfig(**base, protocol=protocol, output_dir=str(tmp_path / protocol))
        runs[protocol] = evaluate(config, backend=FallbackBackend(char_tokenizer, texts), progress=False)
        stored = json.loads((tmp_path / protocol / "results.json").read_text())
        assert stored["protocol"]["name"] == stored["config"]["protocol"] == protocol
        # 8 samples: the validation protocol's own n, an override of the paper's 16.
        assert stored["protocol"]["overridden"] == (["n"] if protocol == "paper" else [])
        record = read_records_file(tmp_path / protocol / RECORDS_FILE)[0]
        expected = [got for _, _, got in FALLBACK_CASES] if protocol == "paper" else None
        if expected is not None:
            assert record["matched_by"] == [m for _, _, m in expected]
            assert record["correct"] == [ok for ok, _, _ in expected]
        else:
            assert record["correct"] == [ok for _, ok, _ in FALLBACK_CASES]
    assert runs["paper"]["config"]["grading"] == "with_fallbacks"
    assert runs["validation"]["config"]["grading"] == "boxed_only"
    assert runs["paper"]["scores"]["AIME24"]["avg_at_n"] == pytest.approx(6 / 8)
    assert runs["validation"]["scores"]["AIME24"]["avg_at_n"] == pytest.approx(1 / 8)
    assert "protocol: paper (grading: with_fallbacks)" in (tmp_path / "paper" / "results.md").read_text()
    capsys.readouterr()

    # Resuming a run under another protocol, or another grading, is refused and names what differs.
    backend = FallbackBackend(char_tokenizer, texts)
    other = EvalConfig(**base, protocol="validation", output_dir=str(tmp_path / "paper"))
    with pytest.raises(EvaluationError, match="protocol: 'paper' there, 'validation' now; grading: 'with_fallbacks'"):
        evaluate(other, backend=backend, progress=False)
    regraded = EvalConfig(**base, grading="boxed_only", output_dir=str(tmp_path / "paper"))
    with pytest.raises(EvaluationError, match=r"different settings \(grading: 'with_fallbacks' there, 'boxed_only'"):
        evaluate(regraded, backend=backend, progress=False)
    # The same protocol resumes (nothing is left to generate).
    evaluate(EvalConfig(**base, output_dir=str(tmp_path / "paper")), backend=backend, progress=False)

    # A folder written before protocols existed holds a `validation` run with boxed-only grading.
    legacy = tmp_path / "validation" / "run_config.json"
    key = json.loads(legacy.read_text())
    legacy.write_text(json.dumps({k: v for k, v in key.items() if k not in ("protocol", "grading")}))
    evaluate(EvalConfig(**base, protocol="validation", output_dir=str(tmp_path / "validation")), backend=backend)
    with pytest.raises(EvaluationError, match="protocol: 'validation' there, 'paper' now"):
        evaluate(EvalConfig(**base, output_dir=str(tmp_path / "validation")), backend=backend, progress=False)
    capsys.readouterr()

    # Comparing runs of different protocols is refused unless asked for.
    assert main(["--compare", str(tmp_path / "paper"), str(tmp_path / "paper")]) == 0
    assert "protocol: paper (grading: with_fallbacks)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--compare", str(tmp_path / "paper"), str(tmp_path / "validation")])
    assert "Cannot compare runs evaluated under different protocols" in capsys.readouterr().err
    assert main(["--compare", str(tmp_path / "paper"), str(tmp_path / "validation"), "--allow_mixed_protocols"]) == 0
    out = capsys.readouterr().out
    assert "Warning: mixed protocols" in out and "| AIME24 | 75.0 | 12.5 |" in out
