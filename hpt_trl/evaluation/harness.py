"""
The evaluation loop: load benchmarks, generate `n` samples per problem, grade them, append one record per problem to
`records.jsonl` (so an interrupted run resumes), then write `results.json`, `results.md` and a pass@k plot.
"""

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from hpt_trl.prompts import render_prompt

from .backends import GenerationBackend, build_backend
from .benchmarks import Problem, load_benchmark, parse_benchmark_args
from .config import RESUME_FIELDS, EvalConfig, EvaluationError
from .grading import grade_with_checks
from .metrics import summarize_records
from .protocols import LEGACY_GRADING, LEGACY_PROTOCOL


RUN_CONFIG_FILE = "run_config.json"
RECORDS_FILE = "records.jsonl"
RESULTS_FILE = "results.json"
MARKDOWN_FILE = "results.md"
PLOT_FILE = "pass_at_k.png"
# 2: records carry `matched_by`, results carry `protocol` (format 1 runs used the `validation` protocol's grading).
FORMAT_VERSION = 2

_DEFAULT_BATCH_SIZE = {"vllm": 256, "transformers": 8}


def _check_or_write_run_config(config: EvalConfig, output_dir: Path) -> None:
    path = output_dir / RUN_CONFIG_FILE
    current = config.resume_key()
    if path.is_file():
        stored = json.loads(path.read_text())
        # Written before protocols existed: that harness used the `validation` values and boxed-only grading.
        stored.setdefault("protocol", LEGACY_PROTOCOL)
        stored.setdefault("grading", LEGACY_GRADING)
        differing = [name for name in RESUME_FIELDS if stored.get(name) != current[name]]
        if differing:
            details = "; ".join(f"{name}: {stored.get(name)!r} there, {current[name]!r} now" for name in differing)
            raise EvaluationError(
                f"Cannot resume in {str(output_dir)!r}: it holds a run with different settings ({details}). Pass the "
                f"same settings to resume it, or choose another --output_dir for a new run."
            )
        return
    if (output_dir / RECORDS_FILE).is_file():
        raise EvaluationError(
            f"{str(output_dir / RECORDS_FILE)!r} exists but {RUN_CONFIG_FILE} does not, so its settings are unknown. "
            f"Choose another --output_dir, or delete the folder to start over."
        )
    path.write_text(json.dumps(current, indent=2) + "\n")


def read_records_file(path: str | os.PathLike) -> list[dict]:
    """
    Read `records.jsonl`, dropping a last line cut short by an interruption.

    Args:
        path (`str` or `os.PathLike`):
            The file.

    Returns:
        `list[dict]`: The complete records, in file order.
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number != len(lines):
                raise EvaluationError(
                    f"{str(path)!r} line {number} is corrupt ({error}); delete that line."
                ) from error
            # The process died while writing this line; that problem is simply generated again.
    if text and not text.endswith("\n"):
        # Rewrite without the cut-off tail, so the next appended record starts on a line of its own.
        with path.open("w", encoding="utf-8") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)
    return records


def _make_record(problem: Problem, prompt_text: str, generations, graded, save_completions: bool) -> dict:
    correct = [ok for ok, _, _ in graded]
    record = {
        "benchmark": problem.benchmark,
        "index": problem.index,
        "problem_id": problem.problem_id,
        "fingerprint": problem.fingerprint,
        "answer": problem.answer,
        "n": len(generations),
        "num_correct": sum(correct),
        "correct": correct,
        "extracted": [extracted for _, extracted, _ in graded],
        "matched_by": [matched_by for _, _, matched_by in graded],
        "response_lengths": [g.num_tokens for g in generations],
        "truncated": [g.truncated for g in generations],
    }
    if save_completions:
        record["prompt"] = prompt_text
        record["completions"] = [g.text for g in generations]
    return record


def _load_problems(config: EvalConfig) -> dict[str, list[Problem]]:
    problems = {}
    for spec, path in parse_benchmark_args(config.benchmarks):
        problems[spec.name] = load_benchmark(
            spec, path=path, data_dir=config.data_dir, source=config.source, limit=config.limit
        )
    return problems


def evaluate(
    config: EvalConfig,
    backend: GenerationBackend | None = None,
    progress: bool = True,
    on_batch_end: Callable[[str, list[dict]], None] | None = None,
) -> dict:
    """
    Run (or resume) an evaluation and write its results.

    Args:
        config (`EvalConfig`):
            The settings.
        backend (`GenerationBackend`, *optional*):
            A ready backend; by default one is loaded from `config.model`, and only when some problem still needs
            samples.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar per benchmark.
        on_batch_end (`Callable[[str, list[dict]], None]`, *optional*):
            Called with the benchmark name and the new records after each batch is written.

    Returns:
        `dict`: The content of `results.json`: `config`, `scores` (per benchmark, see `summarize_records`) and
        `records` (per benchmark, without completion texts).
    """
    from tqdm.auto import tqdm

    problems = _load_problems(config)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_or_write_run_config(config, output_dir)

    records_path = output_dir / RECORDS_FILE
    done: dict[tuple[str, int], dict] = {}
    for record in read_records_file(records_path):
        done[(record["benchmark"], record["index"])] = record
    for name, benchmark_problems in problems.items():
        for problem in benchmark_problems:
            record = done.get((name, problem.index))
            if record is not None and record.get("fingerprint") != problem.fingerprint:
                raise EvaluationError(
                    f"Cannot resume in {str(output_dir)!r}: {name} problem {problem.index} differs from the one "
                    f"evaluated there (the benchmark file changed). Use another --output_dir."
                )

    sampling = config.sampling
    batch_size = config.batch_size or _DEFAULT_BATCH_SIZE[config.backend]
    pending_by_benchmark = {
        name: [p for p in benchmark_problems if (name, p.index) not in done]
        for name, benchmark_problems in problems.items()
    }
    if backend is None and any(pending_by_benchmark.values()):
        # Loaded only when something is left to generate: re-running a finished evaluation just re-reports it.
        backend = build_backend(
            config.backend,
            config.model,
            dtype=config.dtype,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len,
            seed=config.seed,
        )
    started = time.time()
    with records_path.open("a", encoding="utf-8") as records_file:
        for name, benchmark_problems in problems.items():
            pending = pending_by_benchmark[name]
            bar = tqdm(
                total=len(benchmark_problems),
                initial=len(benchmark_problems) - len(pending),
                desc=name,
                unit="problem",
                disable=not progress,
            )
            for start in range(0, len(pending), batch_size):
                batch = pending[start : start + batch_size]
                rendered = [
                    render_prompt(
                        p.prompt, backend.tokenizer, config.template, config.instruction, config.system_prompt
                    )
                    for p in batch
                ]
                prompt_ids = [ids for _, ids in rendered]
                outputs = backend.generate(prompt_ids, sampling, seeds=[config.seed + p.index for p in batch])
                if len(outputs) != len(batch) or any(len(gens) != sampling.n for gens in outputs):
                    raise RuntimeError(
                        f"The {backend.name} backend returned {[len(g) for g in outputs]} samples for {len(batch)} "
                        f"prompts; expected {sampling.n} each."
                    )
                new_records = []
                for problem, (prompt_text, _), generations in zip(batch, rendered, outputs):
                    graded = grade_with_checks(
                        problem, [g.text for g in generations], config.grading_timeout, config.grading
                    )
                    record = _make_record(problem, prompt_text, generations, graded, config.save_completions)
                    records_file.write(json.dumps(record) + "\n")
                    done[(name, problem.index)] = record
                    new_records.append(record)
                records_file.flush()
                os.fsync(records_file.fileno())
                bar.update(len(batch))
                if on_batch_end is not None:
                    on_batch_end(name, new_records)
            bar.close()

    results = build_results(config, problems, done, elapsed_seconds=time.time() - started)
    write_results(results, output_dir, plot=config.plot)
    return results


def build_results(
    config: EvalConfig, problems: dict[str, list[Problem]], done: dict[tuple[str, int], dict], elapsed_seconds=None
) -> dict:
    """Assemble the `results.json` content from the graded records of the benchmarks in `problems`."""
    scores, records = {}, {}
    for name, benchmark_problems in problems.items():
        benchmark_records = [done[(name, p.index)] for p in benchmark_problems if (name, p.index) in done]
        if not benchmark_records:
            continue
        scores[name] = summarize_records(benchmark_records, num_problems=len(benchmark_problems))
        records[name] = [{k: v for k, v in r.items() if k not in ("prompt", "completions")} for r in benchmark_records]
    return {
        "format_version": FORMAT_VERSION,
        "protocol": config.protocol_record(),
        "config": config.to_dict() | {"model_resolved": config.resume_key()["model"]},
        "elapsed_seconds": elapsed_seconds,
        "scores": scores,
        "records": records,
    }


def write_results(results: dict, output_dir: str | os.PathLike, plot: bool = True) -> None:
    """Write `results.json` and `results.md`, print the table, and draw the pass@k plot when matplotlib is there."""
    from .report import format_results_table, plot_pass_at_k

    output_dir = Path(output_dir)
    (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    table = format_results_table(results)
    (output_dir / MARKDOWN_FILE).write_text(table + "\n")
    print(table)
    if plot:
        try:
            plot_pass_at_k([results], output_dir / PLOT_FILE)
        except ImportError as error:
            print(f"Skipped the pass@k plot: {error}")
