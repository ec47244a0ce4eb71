"""
The evaluation loop: load benchmarks, generate `n` samples per problem, grade them, append one record per problem to
`records.jsonl` (so an interrupted run resumes), then write `results.json`, `results.md` and a pass@k plot.
"""

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from hpt_trl.prompts import TEMPLATES, render_prompt

from .backends import BACKENDS, DTYPES, GenerationBackend, SamplingConfig, build_backend
from .benchmarks import BENCHMARK_GROUPS, BENCHMARKS, SOURCES, Problem, load_benchmark, parse_benchmark_args
from .grading import GRADINGS, grade_with_checks
from .metrics import summarize_records
from .protocols import (
    DEFAULT_PROTOCOL,
    LEGACY_GRADING,
    LEGACY_PROTOCOL,
    PROTOCOL_SETTINGS,
    PROTOCOLS,
    get_protocol,
)
from .report import model_label


RUN_CONFIG_FILE = "run_config.json"
RECORDS_FILE = "records.jsonl"
RESULTS_FILE = "results.json"
MARKDOWN_FILE = "results.md"
PLOT_FILE = "pass_at_k.png"
# 2: records carry `matched_by`, results carry `protocol` (format 1 runs used the `validation` protocol's grading).
FORMAT_VERSION = 2

# Settings that change what is generated or how it is graded: a run resumes only when all of them match. The rest
# (batch size, limit, output options, GPU settings) only change how the same samples are produced or reported.
RESUME_FIELDS = (
    "protocol",
    "grading",
    "model",
    "backend",
    "template",
    "instruction",
    "system_prompt",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "seed",
    "dtype",
)

_DEFAULT_BATCH_SIZE = {"vllm": 256, "transformers": 8}

# Metadata key of an `EvalConfig` field that `hpt-eval` sets through another flag, so gets no flag of its own.
COMMAND_LINE = "command_line"


class EvaluationError(ValueError):
    """Raised for invalid settings or an output folder that cannot be resumed."""


@dataclass
class EvalConfig:
    """
    Settings of one evaluation run; they are also `hpt-eval`'s flags (`--model`, `--n`, ...), with the help texts of
    their `metadata`. The protocol's values are filled in where a setting is left unset, and `sampling` then holds the
    sampling settings as the backends take them (a `SamplingConfig`, validated when the config is built).

    Args:
        model (`str`):
            Local checkpoint folder or Hub id. Required (its `None` default only lets `hpt-eval --compare` parse
            without it).
        benchmarks (`list[str]`, *optional*, defaults to `["all"]`):
            Benchmark names, groups (`math`, `ood`, `all`) or `name=path/to/file` pairs.
        output_dir (`str`, *optional*):
            Where records and results go; defaults to `eval_results/<model name>`.
        backend (`str`, *optional*, defaults to `"vllm"`):
            `"vllm"` or `"transformers"`.
        template (`str`, *optional*, defaults to `"chat"`):
            `"chat"` (tokenizer chat template, one user turn), `"llama"` or `"none"`.
        instruction (`str`, *optional*):
            Text appended to every problem (none in the authors' evaluation).
        system_prompt (`str`, *optional*):
            A system turn for the chat template (none in the authors' evaluation).
        protocol (`str`, *optional*, defaults to `"paper"`):
            The evaluation protocol (see `hpt_trl.evaluation.protocols`): `"paper"`, the protocol of the paper's table
            (DeepMath's `uni_eval.py`: n = 16, 32768 new tokens, grading with fallbacks), or `"validation"`, the
            authors' in-training validation (n = 8, 8192 new tokens, boxed answer only). It sets `n`,
            `max_new_tokens`, `temperature`, `top_p` and `grading` where they are left unset (`None`).
        grading (`str`, *optional*):
            `"boxed_only"` or `"with_fallbacks"` (see `hpt_trl.evaluation.grading`); defaults to the protocol's.
        n (`int`, *optional*):
            Samples per problem; defaults to the protocol's (16 `paper`, 8 `validation`).
        temperature (`float`, *optional*):
            Sampling temperature (0 = greedy); defaults to the protocol's (0.6).
        top_p (`float`, *optional*):
            Nucleus sampling mass; defaults to the protocol's (0.95).
        top_k (`int`, *optional*, defaults to `-1`):
            Top-k filtering, -1 disables it.
        max_new_tokens (`int`, *optional*):
            Response token limit; defaults to the protocol's (32768 `paper`, 8192 `validation`). The model's
            context (vLLM's `max_model_len`) may end a response earlier; it then counts as truncated.
        seed (`int`, *optional*, defaults to `0`):
            Base seed; problem `i` is sampled with seed `seed + i` on vLLM.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weights dtype.
        tensor_parallel_size (`int`, *optional*, defaults to `1`):
            vLLM tensor parallelism.
        gpu_memory_utilization (`float`, *optional*, defaults to `0.9`):
            vLLM GPU memory share.
        max_model_len (`int`, *optional*):
            vLLM context length.
        data_dir (`str`, *optional*):
            Folder of local benchmark files named like the authors' (`AIME24.json`, ..., `ARC-c.parquet`).
        source (`str`, *optional*, defaults to `"auto"`):
            `"auto"`, `"local"`, `"authors"` or `"hub"`; see `load_benchmark`.
        limit (`int`, *optional*):
            Evaluate only the first `limit` problems of each benchmark (a later run without it resumes the rest).
        batch_size (`int`, *optional*):
            Problems per generation call (and per checkpoint of `records.jsonl`); 256 on vLLM, 8 on transformers.
        grading_timeout (`float`, *optional*, defaults to `5.0`):
            Seconds allowed to verify one math answer.
        save_completions (`bool`, *optional*, defaults to `True`):
            Keep the response texts in `records.jsonl`.
        plot (`bool`, *optional*, defaults to `True`):
            Draw `pass_at_k.png` (needs matplotlib).
    """

    # `hpt-eval --help` lists these flags under this title (HfArgumentParser reads it).
    _argument_group_name = "evaluation"

    model: str | None = field(default=None, metadata={"help": "Local checkpoint folder or Hub id."})
    benchmarks: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={
            "metavar": "NAME",
            "help": f"Benchmarks: {', '.join(BENCHMARKS)}; groups: {', '.join(BENCHMARK_GROUPS)}; or "
            "NAME=path/to/file (JSON list, JSONL or parquet). Default: all.",
        },
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where records and results go (default: eval_results/<model name>)."}
    )
    backend: str = field(
        default="vllm", metadata={"choices": BACKENDS, "help": "Generation backend (default: %(default)s)."}
    )
    template: str = field(
        default="chat",
        metadata={
            "choices": TEMPLATES,
            "help": "The training template (hpt_trl.prompts): chat: the tokenizer's chat template, one user turn "
            "(Qwen); llama: the authors' 'Question:/Answer:' text with their boxed-answer suffix (Llama-3.1-8B); "
            "none: raw.",
        },
    )
    instruction: str | None = field(
        default=None, metadata={"help": "Text appended to each problem (the authors' evaluation adds none)."}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "A system turn for --template chat (the authors' evaluation has none)."}
    )
    protocol: str = field(
        default=DEFAULT_PROTOCOL,
        metadata={
            "choices": tuple(PROTOCOLS),
            "help": "Evaluation protocol, which sets --n, --max_new_tokens, --temperature, --top_p and --grading "
            "unless they are given: "
            + "; ".join(f"{name}: {protocol.description}" for name, protocol in PROTOCOLS.items())
            + " (default: %(default)s).",
        },
    )
    grading: str | None = field(
        default=None,
        metadata={
            "choices": GRADINGS,
            "help": "Math grading: boxed_only (the last \\boxed{} answer, as the training reward) or with_fallbacks "
            "(boxed, else 'The answer is:', else math-verify over the whole response) (default: the protocol's).",
        },
    )
    # The fields of `SamplingConfig`, which `sampling` is built from. Those a protocol sets are `None` until
    # `__post_init__` fills them in; the others take SamplingConfig's own defaults.
    n: int | None = field(
        default=None, metadata={"help": "Samples per problem (default: the protocol's, 16 paper, 8 validation)."}
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature; 0 = greedy (default: the protocol's, 0.6)."}
    )
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling (default: the protocol's, 0.95)."})
    top_k: int = field(
        default=SamplingConfig.top_k, metadata={"help": "Top-k sampling, -1 = off (default: %(default)s)."}
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Response token limit (default: the protocol's, 32768 paper, 8192 validation; the model's "
            "context may end a response first)."
        },
    )
    seed: int = field(default=SamplingConfig.seed, metadata={"help": "Base seed (default: %(default)s)."})
    dtype: str = field(default="auto", metadata={"choices": DTYPES, "help": "Weights dtype (default: %(default)s)."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM: GPUs per model (default: %(default)s)."})
    gpu_memory_utilization: float = field(
        default=0.9, metadata={"help": "vLLM: GPU memory share (default: %(default)s)."}
    )
    max_model_len: int | None = field(default=None, metadata={"help": "vLLM: context length (default: the model's)."})
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of local benchmark files named like the authors' (AIME24.json ... ARC-c.parquet)."},
    )
    source: str = field(
        default="auto",
        metadata={
            "choices": SOURCES,
            "help": "Benchmark source: local files, the authors' public files, or the Hub (default: auto = local "
            "if --data_dir is given, else the authors' files).",
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Only the first LIMIT problems of each benchmark."})
    batch_size: int | None = field(
        default=None, metadata={"help": "Problems per generation call (default: 256 vLLM, 8 transformers)."}
    )
    grading_timeout: float = field(
        default=5.0, metadata={"help": "Seconds per math verification (default: %(default)s)."}
    )
    # Not flags of their own: `hpt-eval` sets them with --no_completions and --no_plot (see `cli.OutputOptions`).
    save_completions: bool = field(default=True, metadata={COMMAND_LINE: False})
    plot: bool = field(default=True, metadata={COMMAND_LINE: False})
    sampling: SamplingConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.model or not str(self.model).strip():
            raise EvaluationError("`model` is empty: pass a local checkpoint folder or a Hub id with --model.")
        self.model = str(self.model)
        # A Hub id is `name` or `org/name`; anything else that does not exist is a mistyped local path.
        looks_local = self.model.startswith((".", "/", "~")) or "\\" in self.model or self.model.count("/") > 1
        if looks_local:
            if not Path(self.model).expanduser().exists():
                raise EvaluationError(f"--model {self.model!r} does not exist; pass a checkpoint folder or a Hub id.")
            self.model = str(Path(self.model).expanduser())  # transformers does not expand `~`
        if Path(self.model).is_dir() and not (Path(self.model) / "config.json").is_file():
            # Without this, transformers tries tokenizer after tokenizer and ends blaming sentencepiece.
            raise EvaluationError(
                f"--model {self.model!r} is a folder without config.json, so it is not a model checkpoint: pass the "
                "folder that train.py saved (output_dir, or one of its checkpoint-N folders) or a Hub id."
            )
        if isinstance(self.benchmarks, str):
            self.benchmarks = [self.benchmarks]
        self.benchmarks = list(self.benchmarks)
        if not self.benchmarks:
            raise EvaluationError("No benchmark given: pass names with --benchmarks (e.g. `math`, `aime24 math500`).")
        parse_benchmark_args(self.benchmarks)  # unknown names fail here, before any file or model is touched
        try:
            protocol = get_protocol(self.protocol)
        except ValueError as error:
            raise EvaluationError(str(error)) from error
        # The protocol fills what was left unset; settings given another value than the protocol's are recorded.
        self._overridden = []
        for name, value in protocol.settings().items():
            if getattr(self, name) is None:
                setattr(self, name, value)
            elif getattr(self, name) != value:
                self._overridden.append(name)
        for name, value, choices in (
            ("backend", self.backend, BACKENDS),
            ("grading", self.grading, GRADINGS),
            ("template", self.template, TEMPLATES),
            ("dtype", self.dtype, DTYPES),
            ("source", self.source, SOURCES),
        ):
            if value not in choices:
                raise EvaluationError(f"Unknown --{name} {value!r}; choose one of {', '.join(choices)}.")
        try:
            self.sampling = SamplingConfig(**{f.name: getattr(self, f.name) for f in fields(SamplingConfig)})
        except ValueError as error:
            raise EvaluationError(str(error)) from error
        for name in ("limit", "batch_size", "max_model_len"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EvaluationError(f"`{name}` must be an integer >= 1 (or unset), got {value!r}.")
        if self.tensor_parallel_size < 1:
            raise EvaluationError(f"`tensor_parallel_size` must be >= 1, got {self.tensor_parallel_size}.")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise EvaluationError(f"`gpu_memory_utilization` must be in (0, 1], got {self.gpu_memory_utilization}.")
        if self.grading_timeout <= 0:
            raise EvaluationError(f"`grading_timeout` must be > 0 seconds, got {self.grading_timeout}.")
        if self.system_prompt and self.template != "chat":
            raise EvaluationError(f"--system_prompt needs --template chat (got {self.template}); use --instruction.")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise EvaluationError(f"--data_dir {self.data_dir!r} is not a folder; point it at the benchmark files.")
        if self.output_dir is None:
            self.output_dir = str(Path("eval_results") / model_label(self.model))

    def protocol_record(self) -> dict:
        """
        What `results.json` records of the protocol: its name and description, the values it sets, the values this
        run used, and which of them were overridden.
        """
        protocol = PROTOCOLS[self.protocol]
        return {
            "name": protocol.name,
            "description": protocol.description,
            "defaults": protocol.settings(),
            "used": {name: getattr(self, name) for name in PROTOCOL_SETTINGS},
            "overridden": list(getattr(self, "_overridden", [])),
        }

    def resume_key(self) -> dict:
        """The settings a resumed run must share, with a local model path made absolute."""
        key = {name: getattr(self, name) for name in RESUME_FIELDS}
        if os.path.exists(self.model):
            key["model"] = str(Path(self.model).resolve())
        return key

    def to_dict(self) -> dict:
        """The settings, as the constructor takes them (what `results.json` records under `config`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


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
