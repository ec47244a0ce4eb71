"""Command line: `python -m hpt_trl.evaluation` (or `hpt-eval`)."""

import argparse
import sys

from hpt_trl.prompts import TEMPLATES

from .backends import BACKENDS, DTYPES
from .benchmarks import BENCHMARK_GROUPS, BENCHMARKS, SOURCES, BenchmarkError
from .grading import GRADINGS
from .harness import EvalConfig, EvaluationError, evaluate
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS
from .report import compare_results, load_results, plot_pass_at_k


_EXAMPLES = """examples:
  # the paper's table on vLLM: 8 benchmarks, the default --protocol paper (DeepMath's uni_eval.py, which the authors
  # evaluate with: 16 samples at temperature 0.6, top-p 0.95, 32768 new tokens, grading with fallbacks)
  hpt-eval --model <org>/<hpt-checkpoint> --benchmarks all --tensor_parallel_size 2 --output_dir eval/hpt-7b

  # the authors' in-training validation (8 samples, 8192 new tokens, boxed answer only, as the training reward)
  hpt-eval --model out/checkpoint-500 --benchmarks aime24 amc23 math500 --protocol validation

  # pass@k up to k = 1024 on AIME24 / AIME25 from local files
  hpt-eval --model out/checkpoint-500 --benchmarks aime24 aime25 --n 1024 --data_dir ../shared/benchmarks

  # a quick CPU check with transformers
  hpt-eval --model out/checkpoint-500 --backend transformers --benchmarks amc23 --limit 4 --n 2 --max_new_tokens 256

  # two checkpoints side by side, plus their pass@k curves
  hpt-eval --compare eval/sft eval/hpt --plot eval/compare.png
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpt-eval",
        description=(
            "Evaluate a checkpoint on the HPT paper's benchmarks: n samples per problem, graded answers, avg@n (the "
            "paper's score), pass@k, mean response length and truncation. Interrupted runs resume from "
            "--output_dir."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("evaluation")
    run.add_argument("--model", help="Local checkpoint folder or Hub id.")
    run.add_argument(
        "--benchmarks",
        nargs="+",
        default=["all"],
        metavar="NAME",
        help=(
            f"Benchmarks: {', '.join(BENCHMARKS)}; groups: {', '.join(BENCHMARK_GROUPS)}; or NAME=path/to/file "
            "(JSON list, JSONL or parquet). Default: all."
        ),
    )
    run.add_argument("--output_dir", help="Where records and results go (default: eval_results/<model name>).")
    run.add_argument("--backend", choices=BACKENDS, default="vllm", help="Generation backend (default: vllm).")
    run.add_argument(
        "--template",
        choices=TEMPLATES,
        default="chat",
        help="The training template (hpt_trl.prompts): chat: the tokenizer's chat template, one user turn (Qwen); "
        "llama: the authors' 'Question:/Answer:' text with their boxed-answer suffix (Llama-3.1-8B); none: raw.",
    )
    run.add_argument("--instruction", help="Text appended to each problem (the authors' evaluation adds none).")
    run.add_argument("--system_prompt", help="A system turn for --template chat (the authors' evaluation has none).")
    run.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default=DEFAULT_PROTOCOL,
        help="Evaluation protocol, which sets --n, --max_new_tokens, --temperature, --top_p and --grading unless "
        "they are given: "
        + "; ".join(f"{name}: {protocol.description}" for name, protocol in PROTOCOLS.items())
        + f" (default: {DEFAULT_PROTOCOL}).",
    )
    run.add_argument(
        "--grading",
        choices=GRADINGS,
        help="Math grading: boxed_only (the last \\boxed{} answer, as the training reward) or with_fallbacks (boxed, "
        "else 'The answer is:', else math-verify over the whole response) (default: the protocol's).",
    )
    run.add_argument("--n", type=int, help="Samples per problem (default: the protocol's, 16 paper, 8 validation).")
    run.add_argument(
        "--temperature", type=float, help="Sampling temperature; 0 = greedy (default: the protocol's, 0.6)."
    )
    run.add_argument("--top_p", type=float, help="Nucleus sampling (default: the protocol's, 0.95).")
    run.add_argument("--top_k", type=int, default=-1, help="Top-k sampling, -1 = off (default: -1).")
    run.add_argument(
        "--max_new_tokens",
        type=int,
        help="Response token limit (default: the protocol's, 32768 paper, 8192 validation; the model's context may "
        "end a response first).",
    )
    run.add_argument("--seed", type=int, default=0, help="Base seed (default: 0).")
    run.add_argument("--dtype", choices=DTYPES, default="auto", help="Weights dtype (default: auto).")
    run.add_argument("--tensor_parallel_size", type=int, default=1, help="vLLM: GPUs per model (default: 1).")
    run.add_argument(
        "--gpu_memory_utilization", type=float, default=0.9, help="vLLM: GPU memory share (default: 0.9)."
    )
    run.add_argument("--max_model_len", type=int, help="vLLM: context length (default: the model's).")
    run.add_argument(
        "--data_dir", help="Folder of local benchmark files named like the authors' (AIME24.json ... ARC-c.parquet)."
    )
    run.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="Benchmark source: local files, the authors' public files, or the Hub (default: auto = local if "
        "--data_dir is given, else the authors' files).",
    )
    run.add_argument("--limit", type=int, help="Only the first LIMIT problems of each benchmark.")
    run.add_argument(
        "--batch_size", type=int, help="Problems per generation call (default: 256 vLLM, 8 transformers)."
    )
    run.add_argument("--grading_timeout", type=float, default=5.0, help="Seconds per math verification (default: 5).")
    run.add_argument("--no_completions", action="store_true", help="Do not store response texts in records.jsonl.")
    run.add_argument("--no_plot", action="store_true", help="Do not draw pass_at_k.png.")
    run.add_argument("--no_progress", action="store_true", help="Hide the progress bars.")

    compare = parser.add_argument_group("comparison")
    compare.add_argument(
        "--compare", nargs="+", metavar="RUN", help="Print runs side by side (results.json files or output folders)."
    )
    compare.add_argument(
        "--metric", default="avg", help="With --compare: avg, pass@<k>, length or truncated (default: avg)."
    )
    compare.add_argument("--plot", metavar="PNG", help="With --compare: also draw the runs' pass@k curves here.")
    compare.add_argument(
        "--allow_mixed_protocols",
        action="store_true",
        help="With --compare: print runs evaluated under different protocols or gradings (refused otherwise).",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """
    Entry point of `hpt-eval` / `python -m hpt_trl.evaluation`.

    Args:
        argv (`list[str]`, *optional*):
            Arguments; `sys.argv[1:]` by default.

    Returns:
        `int`: The exit status (bad input exits with status 2 and a message naming the field).
    """
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.compare:
        try:
            runs = [load_results(path) for path in args.compare]
            print(compare_results(runs, metric=args.metric, allow_mixed_protocols=args.allow_mixed_protocols))
            if args.plot:
                print(f"pass@k curves: {plot_pass_at_k(runs, args.plot)}")
        except (FileNotFoundError, ValueError, ImportError) as error:
            parser.error(str(error))
        return 0

    if not args.model:
        parser.error("--model is required (a local checkpoint folder or a Hub id), unless you use --compare.")
    try:
        config = EvalConfig(
            model=args.model,
            benchmarks=args.benchmarks,
            output_dir=args.output_dir,
            backend=args.backend,
            template=args.template,
            instruction=args.instruction,
            system_prompt=args.system_prompt,
            protocol=args.protocol,
            grading=args.grading,
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            dtype=args.dtype,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            data_dir=args.data_dir,
            source=args.source,
            limit=args.limit,
            batch_size=args.batch_size,
            grading_timeout=args.grading_timeout,
            save_completions=not args.no_completions,
            plot=not args.no_plot,
        )
        evaluate(config, progress=not args.no_progress)
    except (EvaluationError, BenchmarkError, ImportError) as error:
        parser.error(str(error))
    print(f"Results: {config.output_dir}", file=sys.stderr)
    return 0
