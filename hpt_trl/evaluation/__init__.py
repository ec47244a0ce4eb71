"""
Evaluation harness for the benchmarks of the HPT paper (arXiv 2509.04419), following the authors' protocol.

`python -m hpt_trl.evaluation --model <path or Hub id> --benchmarks all` samples `n` responses per problem on vLLM (or
transformers), grades them with the project's verifier, and reports avg@n (the paper's score), pass@k, mean response
length and the share of truncated responses. The default `--protocol paper` follows the evaluation of the paper's
table (DeepMath's `uni_eval.py`: 16 samples, 32768 new tokens, grading with fallbacks); `--protocol validation` is
the authors' in-training validation (8 samples, 8192 tokens, boxed answer only). Everything here imports without
torch or transformers; the backends, the training callback and the command line load them on use.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from hpt_trl.prompts import LLAMA_SUFFIX, LLAMA_TEMPLATE, TEMPLATES, render_prompt

from .backends import (
    Generation,
    SamplingConfig,
    TransformersBackend,
    VLLMBackend,
    build_backend,
    import_vllm,
    transformers_generate_kwargs,
    vllm_sampling_kwargs,
)
from .benchmarks import (
    BENCHMARK_GROUPS,
    BENCHMARKS,
    BenchmarkError,
    BenchmarkSpec,
    Problem,
    get_benchmark,
    load_benchmark,
    parse_benchmark_args,
)
from .config import EvalConfig, EvaluationError
from .grading import (
    GRADINGS,
    extract_answer_is,
    extract_choice,
    grade_completion,
    grade_completions,
    grade_with_checks,
)
from .harness import evaluate, read_records_file
from .metrics import pass_at_k, pass_at_k_budgets, summarize_records
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS, EvalProtocol, get_protocol
from .report import compare_results, format_results_table, load_results, plot_pass_at_k


if TYPE_CHECKING:
    from .callback import BenchmarkCallback
    from .cli import main

# The callback subclasses `transformers.TrainerCallback` and the command line is a `transformers.HfArgumentParser`:
# import them only when asked for, to keep this package light (importing transformers takes seconds).
_LAZY = {"BenchmarkCallback": "hpt_trl.evaluation.callback", "main": "hpt_trl.evaluation.cli"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpt_trl.evaluation' has no attribute {name!r}")


__all__ = [
    "BENCHMARKS",
    "BENCHMARK_GROUPS",
    "BenchmarkCallback",
    "BenchmarkError",
    "BenchmarkSpec",
    "DEFAULT_PROTOCOL",
    "EvalConfig",
    "EvalProtocol",
    "EvaluationError",
    "GRADINGS",
    "Generation",
    "LLAMA_SUFFIX",
    "LLAMA_TEMPLATE",
    "PROTOCOLS",
    "Problem",
    "SamplingConfig",
    "TEMPLATES",
    "TransformersBackend",
    "VLLMBackend",
    "build_backend",
    "compare_results",
    "evaluate",
    "extract_answer_is",
    "extract_choice",
    "format_results_table",
    "get_benchmark",
    "get_protocol",
    "grade_completion",
    "grade_completions",
    "grade_with_checks",
    "import_vllm",
    "load_benchmark",
    "load_results",
    "main",
    "parse_benchmark_args",
    "pass_at_k",
    "pass_at_k_budgets",
    "plot_pass_at_k",
    "read_records_file",
    "render_prompt",
    "summarize_records",
    "transformers_generate_kwargs",
    "vllm_sampling_kwargs",
]
