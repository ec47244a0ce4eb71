"""
The settings of one evaluation run, `EvalConfig`: its fields are also `hpt-eval`'s flags (see `cli.py`), and it checks
them all before any file or model is touched.
"""

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from hpt_trl.prompts import TEMPLATES

from .backends import BACKENDS, DTYPES, SamplingConfig
from .benchmarks import BENCHMARK_GROUPS, BENCHMARKS, SOURCES, parse_benchmark_args
from .grading import GRADINGS
from .protocols import DEFAULT_PROTOCOL, PROTOCOL_SETTINGS, PROTOCOLS, get_protocol
from .report import model_label


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
