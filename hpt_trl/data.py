"""
Loading HPT training data: prompts, expert demonstrations and gold answers, in the form [`HPTTrainer`] expects.

The authors train on the Hub dataset `Elliott/Openr1-Math-46k-8192` (verl schema): `prompt` (chat messages with a
system prompt, which their `data/prepare_train.py` drops, as `keep_system_prompt=False` does here), `target`
(`[{"role": "assistant", "content": <R1 trace>}]`), `reward_model` (a struct whose `ground_truth` is the gold
answer), `data_source`, `ability`, `extra_info`. [`load_hpt_dataset`] turns that schema, or
any dataset whose columns are named through [`HPTDatasetOptions`], into three columns:

- `prompt`: chat messages (`prompt_template="chat"`), the base-model "Question/Answer" string
  (`prompt_template="llama"`), or the source prompt unchanged (`prompt_template="none"`), built by the templates of
  `hpt_trl.prompts` that evaluation uses too;
- `demonstration` ([`~hpt_trl.demonstrations.DEMONSTRATION_COLUMN`], the default of [`HPTConfig`]'s
  `demonstration_column`): the expert solution as a string (the trainer appends EOS);
- `solution`: the gold answer as a string, the argument of [`~hpt_trl.rewards.accuracy_reward`].

[`HPTScriptArguments`] exposes the same options to `trl.TrlParser`, so a training script parses
`(HPTScriptArguments, HPTConfig, ModelConfig)` from one YAML recipe.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
import pyarrow
from datasets.exceptions import DatasetGenerationError
from transformers import PreTrainedTokenizerBase
from trl import ScriptArguments

from .demonstrations import DEMONSTRATION_COLUMN, demonstration_text
from .prompts import TEMPLATES, build_prompt
from .rewards import REWARD_FUNCS, get_reward_funcs


logger = logging.getLogger(__name__)

HPT_DATASET_NAME = "Elliott/Openr1-Math-46k-8192"
# The templates are defined once, in `hpt_trl.prompts`, for training and evaluation alike.
PROMPT_TEMPLATES = TEMPLATES
METHODS = ("hpt", "sft", "grpo", "sft_then_grpo")

# Extensions that `datasets` reads with a packaged builder; anything else is treated as a Hub name or a directory.
_LOCAL_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


@dataclass
class HPTDatasetOptions:
    r"""
    How [`load_hpt_dataset`] maps a source dataset to the columns `prompt`, `demonstration` and `solution`.

    [`load_hpt_dataset`] takes these as keyword arguments. [`HPTScriptArguments`] (`train.py`'s flags and recipe keys)
    sets the same options under the same names, except the source columns and `num_proc`, which are prefixed with
    `dataset_` there (`dataset_prompt_column`, `dataset_demonstration_column`, `dataset_solution_column`,
    `dataset_num_proc`) so as not to clash with [`HPTConfig`] (whose `demonstration_column` names the column the
    trainer reads, `"demonstration"` after loading); the script also defaults the token budgets to the paper's.

    Parameters:
        prompt_template (`str`, *optional*, defaults to `"chat"`):
            `"chat"`: `prompt` is a list of chat messages (a string source prompt becomes one user turn; for models
            with a chat template, e.g. Qwen2.5-Math). `"llama"`: `prompt` is the authors' Llama-3.1-8B string
            (`hpt_trl.prompts.llama_prompt`: `"Question:\n"`, the last user message unstripped, the suffix
            `"\nPlease reason step by step, and put your final answer within \\boxed{}."`, then
            `"\nAnswer:\nLet's think step by step."`), for base models without a chat template. `"none"`: the source
            prompt is kept as it is. Evaluation (`hpt-eval --template`) renders the same templates from
            `hpt_trl.prompts`.
        keep_system_prompt (`bool`, *optional*, defaults to `False`):
            Whether to keep the source's system message(s). The default drops them, as the authors'
            `data/prepare_train.py` does, so Qwen2.5-Math's chat template supplies its own default system turn, as in
            evaluation. With `prompt_template="llama"` a kept system prompt is written before the question.
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Source column with the prompt: a string or a list of chat messages. This and the two next columns accept
            dotted paths into structs.
        demonstration_column (`str`, *optional*, defaults to `"target"`):
            Source column with the expert solution: a string, or a list holding one assistant message. (The loaded
            dataset holds it in [`~hpt_trl.demonstrations.DEMONSTRATION_COLUMN`], which [`HPTConfig`]'s own
            `demonstration_column` names.)
        solution_column (`str`, *optional*, defaults to `"reward_model.ground_truth"`):
            Source column with the gold answer; it is converted to a string.
        max_demonstration_tokens (`int`, *optional*):
            Token budget of a demonstration, counting the EOS the trainer appends (the paper truncates demonstrations
            at 8192 tokens, the script's default). Needs the model's tokenizer.
        max_demonstration_chars (`int`, *optional*):
            Character budget of a demonstration, usable without a tokenizer.
        drop_long_demonstrations (`bool`, *optional*, defaults to `False`):
            Drop rows whose demonstration exceeds a budget; otherwise keep them for the trainer to truncate at
            `max_completion_length`. The number over budget is logged and counted either way.
        max_prompt_tokens (`int`, *optional*):
            Drop rows whose formatted prompt (chat template applied) exceeds this many tokens (the paper's maximum
            prompt length is 1024, the script's default; TRL's GRPO has no prompt-length option). Needs the tokenizer.
        num_proc (`int`, *optional*):
            Processes for `datasets.Dataset.map`.
    """

    prompt_template: str = "chat"
    keep_system_prompt: bool = False
    prompt_column: str = "prompt"
    demonstration_column: str = "target"
    solution_column: str = "reward_model.ground_truth"
    max_demonstration_tokens: int | None = None
    max_demonstration_chars: int | None = None
    drop_long_demonstrations: bool = False
    max_prompt_tokens: int | None = None
    num_proc: int | None = None

    def __post_init__(self):
        if self.prompt_template not in PROMPT_TEMPLATES:
            raise ValueError(f"prompt_template must be one of {PROMPT_TEMPLATES}, got {self.prompt_template!r}.")


# The script option (HPTScriptArguments, train.py's --flag and recipe key) of each loader option named differently.
_SCRIPT_OPTIONS = {
    "prompt_column": "dataset_prompt_column",
    "demonstration_column": "dataset_demonstration_column",
    "solution_column": "dataset_solution_column",
    "num_proc": "dataset_num_proc",
}
_DEFAULT_OPTIONS = HPTDatasetOptions()


@dataclass
class HPTScriptArguments(ScriptArguments):
    r"""
    Script arguments for HPT training: where the data comes from, how prompts are formatted and which rewards are used.

    Inherits `dataset_name`, `dataset_config`, `dataset_train_split`, `dataset_test_split`, `dataset_streaming` and
    `ignore_bias_buffers` from [`~trl.ScriptArguments`]. Parse it together with [`HPTConfig`] and
    [`~trl.ModelConfig`]: `TrlParser((HPTScriptArguments, HPTConfig, ModelConfig))`.

    The data options `prompt_template`, `keep_system_prompt`, `dataset_prompt_column`, `dataset_demonstration_column`,
    `dataset_solution_column`, `max_demonstration_tokens`, `max_demonstration_chars`, `drop_long_demonstrations`,
    `max_prompt_tokens` and `dataset_num_proc` are those of [`HPTDatasetOptions`], which documents them (the source
    columns and `num_proc` take a `dataset_` prefix here, so that they do not clash with [`HPTConfig`]'s fields);
    [`~HPTScriptArguments.loader_kwargs`] hands them to [`load_hpt_dataset`]. Only the defaults that differ are listed.

    Parameters:
        dataset_name (`str`, *optional*, defaults to `"Elliott/Openr1-Math-46k-8192"`):
            Hub dataset name, a local directory, or a local `.parquet`, `.json`, `.jsonl` or `.csv` file.
        max_demonstration_tokens (`int`, *optional*, defaults to `8192`):
            As in [`HPTDatasetOptions`], with the paper's budget as default; `None` disables the check.
        max_prompt_tokens (`int`, *optional*, defaults to `1024`):
            As in [`HPTDatasetOptions`], with the paper's maximum prompt length as default; `None` keeps every prompt.
        reward_funcs (`list[str]`, *optional*, defaults to `["accuracy"]`):
            Names of the reward functions, keys of [`~hpt_trl.rewards.REWARD_FUNCS`]: `"accuracy"` (binary, boxed
            answer, the paper's reward) and `"format"`.
        method (`str`, *optional*, defaults to `"hpt"`):
            `"hpt"` trains with the recipe's `gamma`; the paper's baselines are the same trainer with another gate:
            `"sft"` (`gamma = num_generations`: every prompt SFT), `"grpo"` (`gamma = -1`) and `"sft_then_grpo"` (SFT
            for the first half of `max_steps`, then GRPO from that checkpoint for the rest).
    """

    dataset_name: str | None = field(
        default=HPT_DATASET_NAME,
        metadata={"help": "Hub dataset name, local directory, or local .parquet/.json/.jsonl/.csv file."},
    )
    prompt_template: str = field(
        default=_DEFAULT_OPTIONS.prompt_template,
        metadata={
            "help": "Prompt format: 'chat' (chat messages), 'llama' (base-model Question/Answer string) or 'none'.",
            "choices": list(PROMPT_TEMPLATES),
        },
    )
    keep_system_prompt: bool = field(
        default=_DEFAULT_OPTIONS.keep_system_prompt,
        metadata={"help": "Whether to keep the dataset's system prompt (the authors drop it: data/prepare_train.py)."},
    )
    dataset_prompt_column: str = field(
        default=_DEFAULT_OPTIONS.prompt_column,
        metadata={"help": "Source column with the prompt (dotted paths reach into structs)."},
    )
    dataset_demonstration_column: str = field(
        default=_DEFAULT_OPTIONS.demonstration_column,
        metadata={"help": "Source column with the expert solution (string or assistant message)."},
    )
    dataset_solution_column: str = field(
        default=_DEFAULT_OPTIONS.solution_column,
        metadata={"help": "Source column with the gold answer (dotted paths reach into structs)."},
    )
    max_demonstration_tokens: int | None = field(
        default=8192, metadata={"help": "Token budget of a demonstration (EOS included); needs the tokenizer."}
    )
    max_demonstration_chars: int | None = field(
        default=_DEFAULT_OPTIONS.max_demonstration_chars,
        metadata={"help": "Character budget of a demonstration, for use without a tokenizer."},
    )
    drop_long_demonstrations: bool = field(
        default=_DEFAULT_OPTIONS.drop_long_demonstrations,
        metadata={"help": "Drop rows whose demonstration exceeds the budget instead of letting the trainer truncate."},
    )
    max_prompt_tokens: int | None = field(
        default=1024, metadata={"help": "Drop rows whose formatted prompt exceeds this many tokens."}
    )
    dataset_num_proc: int | None = field(
        default=_DEFAULT_OPTIONS.num_proc, metadata={"help": "Number of processes for the dataset preprocessing."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy"],
        metadata={"help": f"Reward function names, from {sorted(REWARD_FUNCS)}."},
    )
    method: str = field(
        default="hpt",
        metadata={
            "help": "Training method: 'hpt' (the recipe's gamma), 'sft' (gamma = num_generations), 'grpo' "
            "(gamma = -1) or 'sft_then_grpo' (SFT for the first half of max_steps, then GRPO from it).",
            "choices": list(METHODS),
        },
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
        HPTDatasetOptions(**self._dataset_options())  # checks the options as the loader will
        for name in ("max_demonstration_tokens", "max_demonstration_chars", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer or None, got {value}.")
        if self.dataset_streaming:
            raise ValueError(
                "dataset_streaming=True is not supported: HPT maps and filters the whole dataset before training. "
                "Set dataset_streaming to false (filter a large dataset to a local file first if it does not fit)."
            )
        get_reward_funcs(self.reward_funcs)  # fail at parse time, not after the model has loaded

    def _dataset_options(self) -> dict[str, Any]:
        """The [`HPTDatasetOptions`] set by these script arguments, under the loader's names."""
        return {
            option.name: getattr(self, _SCRIPT_OPTIONS.get(option.name, option.name))
            for option in fields(HPTDatasetOptions)
        }

    def loader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of [`load_hpt_dataset`] taken from these script arguments."""
        return {
            "dataset_name": self.dataset_name,
            "dataset_config": self.dataset_config,
            "split": self.dataset_train_split,
            **self._dataset_options(),
        }


@dataclass
class HPTDatasetStats:
    """
    Row counts of one [`prepare_hpt_dataset`] call.

    Attributes:
        num_rows_in (`int`): rows of the source dataset.
        num_rows_out (`int`): rows returned.
        num_long_demonstrations (`int`): demonstrations over the token or character budget (dropped or kept).
        num_dropped_long_demonstrations (`int`): rows dropped for that reason.
        num_dropped_long_prompts (`int`): rows dropped because the prompt exceeded `max_prompt_tokens`.
    """

    num_rows_in: int = 0
    num_rows_out: int = 0
    num_long_demonstrations: int = 0
    num_dropped_long_demonstrations: int = 0
    num_dropped_long_prompts: int = 0


def _load_raw(dataset_name: str, dataset_config: str | None, split: str) -> datasets.Dataset:
    suffix = Path(dataset_name).suffix.lower()
    if suffix in _LOCAL_BUILDERS:
        if not Path(dataset_name).is_file():
            raise FileNotFoundError(f"Dataset file {dataset_name} does not exist (set `dataset_name` to its path).")
        # A single local file always forms the "train" split, whatever `dataset_train_split` says.
        try:
            return datasets.load_dataset(_LOCAL_BUILDERS[suffix], data_files=dataset_name, split="train")
        except (DatasetGenerationError, pyarrow.ArrowException) as error:  # their messages do not name the file
            cause = error.__cause__ or error
            raise ValueError(
                f"Could not read the dataset file {dataset_name}: {cause}. Fix the file (or set "
                "`dataset_name` to another file)."
            ) from error
    return datasets.load_dataset(dataset_name, dataset_config, split=split)


def _fix_column(argument: str) -> str:
    """How to point the loader at another column: the script option, and the argument of the Python API."""
    option = _SCRIPT_OPTIONS.get(argument, argument)
    return f"`--{option}` (recipe key `{option}`; `{argument}` of load_hpt_dataset)"


def _get_path(row: dict[str, Any], path: str, argument: str, available: list[str]) -> Any:
    """Value of column `path` in `row`, following dots into structs; the error names the argument to fix."""
    if path in row:  # a flat column whose name contains a dot wins over the struct path
        return row[path]
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ValueError(
                f"Column '{path}' not found in the dataset (columns: {available}). Set {_fix_column(argument)} to "
                "the column that holds it; dotted paths such as 'reward_model.ground_truth' reach into struct columns."
            )
        value = value[part]
    return value


def _check_column(path: str, argument: str, column_names: list[str], features: datasets.Features) -> None:
    if path in column_names:
        return
    head, *rest = path.split(".")
    feature = features.get(head)
    for part in rest:
        if not isinstance(feature, dict) or part not in feature:
            feature = None
            break
        feature = feature[part]
    if feature is None:
        raise ValueError(
            f"Column '{path}' not found in the dataset (columns: {column_names}). Set {_fix_column(argument)} to "
            "the column that holds it; dotted paths such as 'reward_model.ground_truth' reach into struct columns."
        )


def _as_messages(prompt: Any, column: str) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
    ):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise ValueError(
        f"The prompt in column '{column}' is a {type(prompt).__name__}; expected a string or a list of chat messages "
        f"with 'role' and 'content'. Point {_fix_column('prompt_column')} at such a column."
    )


def _format_prompt(prompt: Any, template: str, keep_system_prompt: bool, column: str) -> str | list[dict[str, str]]:
    if template == "none" and isinstance(prompt, str):
        return prompt
    messages = _as_messages(prompt, column)
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if template in ("chat", "none"):
        return messages if keep_system_prompt else turns
    users = [m for m in turns if m["role"] == "user"]
    if not users:
        raise ValueError(f"The prompt in column '{column}' has no user message to build the 'llama' prompt from.")
    # The problem as it is (the authors strip nothing), through the template evaluation renders too.
    system_prompt = "\n\n".join(m["content"] for m in system) if keep_system_prompt and system else None
    return build_prompt(users[-1]["content"], "llama", system_prompt=system_prompt)


def _prompt_num_tokens(prompt: str | list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> int:
    if isinstance(prompt, str):
        return len(tokenizer(prompt)["input_ids"])
    # Render to text first: with `tokenize=True` the return type differs across transformers versions.
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def prepare_hpt_dataset(
    dataset: datasets.Dataset,
    options: HPTDatasetOptions | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[datasets.Dataset, HPTDatasetStats]:
    """
    Map an already loaded dataset to the `prompt`, `demonstration` and `solution` columns of [`HPTTrainer`].

    Args:
        dataset ([`~datasets.Dataset`]):
            The source dataset.
        options ([`HPTDatasetOptions`], *optional*):
            Source columns, prompt template and length budgets; the defaults read the authors' schema.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            The model's tokenizer; needed by the token budgets.

    Returns:
        `tuple[Dataset, HPTDatasetStats]`: The mapped dataset and the row counts.
    """
    options = options if options is not None else HPTDatasetOptions()
    if (options.max_demonstration_tokens is not None or options.max_prompt_tokens is not None) and tokenizer is None:
        raise ValueError(
            "max_demonstration_tokens and max_prompt_tokens count tokens and need the model's tokenizer: pass "
            "`tokenizer`, set them to None, or use max_demonstration_chars for a character budget."
        )
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"Expected a datasets.Dataset, got {type(dataset).__name__} (streaming is not supported).")

    column_names = list(dataset.column_names)
    for path, argument in (
        (options.prompt_column, "prompt_column"),
        (options.demonstration_column, "demonstration_column"),
        (options.solution_column, "solution_column"),
    ):
        _check_column(path, argument, column_names, dataset.features)

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        prompt = _format_prompt(
            _get_path(row, options.prompt_column, "prompt_column", column_names),
            options.prompt_template,
            options.keep_system_prompt,
            options.prompt_column,
        )
        demonstration = demonstration_text(
            _get_path(row, options.demonstration_column, "demonstration_column", column_names),
            options.demonstration_column,
            index,
        )
        solution = _get_path(row, options.solution_column, "solution_column", column_names)
        if isinstance(solution, (list, tuple)) and len(solution) == 1:
            solution = solution[0]
        if solution is None or (isinstance(solution, str) and not solution.strip()):
            raise ValueError(
                f"Row {index} has no gold answer in column '{options.solution_column}'. Drop such rows first or point "
                f"{_fix_column('solution_column')} at the column with the answers."
            )
        demo_too_long = (
            options.max_demonstration_chars is not None and len(demonstration) > options.max_demonstration_chars
        )
        prompt_too_long = False
        if tokenizer is not None:
            if options.max_demonstration_tokens is not None:
                # +1 for the EOS the trainer appends, so the budget means what the trainer's truncation means.
                num_tokens = len(tokenizer(demonstration, add_special_tokens=False)["input_ids"]) + 1
                demo_too_long = demo_too_long or num_tokens > options.max_demonstration_tokens
            if options.max_prompt_tokens is not None:
                prompt_too_long = _prompt_num_tokens(prompt, tokenizer) > options.max_prompt_tokens
        return {
            "prompt": prompt,
            DEMONSTRATION_COLUMN: demonstration,
            "solution": str(solution),
            "_demo_too_long": demo_too_long,
            "_prompt_too_long": prompt_too_long,
        }

    mapped = dataset.map(
        convert,
        with_indices=True,
        remove_columns=column_names,
        num_proc=options.num_proc,
        desc="Formatting HPT dataset",
    )
    demo_flags = mapped["_demo_too_long"]
    prompt_flags = mapped["_prompt_too_long"]
    stats = HPTDatasetStats(
        num_rows_in=len(dataset),
        num_long_demonstrations=sum(demo_flags),
        num_dropped_long_prompts=sum(prompt_flags),
    )
    keep = [
        not p and not (d and options.drop_long_demonstrations) for d, p in zip(demo_flags, prompt_flags, strict=True)
    ]
    stats.num_dropped_long_demonstrations = sum(
        1 for d, p in zip(demo_flags, prompt_flags, strict=True) if d and options.drop_long_demonstrations and not p
    )
    if not all(keep):
        mapped = mapped.select([i for i, k in enumerate(keep) if k])
    mapped = mapped.remove_columns(["_demo_too_long", "_prompt_too_long"])
    stats.num_rows_out = len(mapped)

    budget = (
        f"{options.max_demonstration_tokens} tokens"
        if options.max_demonstration_tokens is not None and tokenizer is not None
        else ""
    )
    if options.max_demonstration_chars is not None:
        budget = (
            f"{budget} / {options.max_demonstration_chars} characters"
            if budget
            else f"{options.max_demonstration_chars} characters"
        )
    if stats.num_long_demonstrations:
        action = "dropped" if options.drop_long_demonstrations else "kept (the trainer truncates them)"
        logger.warning(
            f"{stats.num_long_demonstrations} of {stats.num_rows_in} demonstrations exceed {budget}: {action}."
        )
    if stats.num_dropped_long_prompts:
        logger.warning(
            f"Dropped {stats.num_dropped_long_prompts} of {stats.num_rows_in} rows whose prompt exceeds "
            f"{options.max_prompt_tokens} tokens."
        )
    if stats.num_rows_out == 0:
        raise ValueError(
            f"No rows left out of {stats.num_rows_in} after filtering ({stats}). Raise the length budgets or set "
            "drop_long_demonstrations=False."
        )
    return mapped, stats


def load_hpt_dataset(
    dataset_name: str = HPT_DATASET_NAME,
    dataset_config: str | None = None,
    split: str = "train",
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    return_stats: bool = False,
    **options: Any,
) -> datasets.Dataset | tuple[datasets.Dataset, HPTDatasetStats]:
    r"""
    Load HPT training data and map it to the columns `prompt`, `demonstration` and `solution`.

    Args:
        dataset_name (`str`, *optional*, defaults to `"Elliott/Openr1-Math-46k-8192"`):
            The authors' Hub dataset, another Hub dataset, a local directory, or a local `.parquet`, `.json`,
            `.jsonl` or `.csv` file (a single file always forms the `"train"` split).
        dataset_config (`str`, *optional*):
            Hub dataset configuration name.
        split (`str`, *optional*, defaults to `"train"`):
            Split to load (Hub datasets and directories).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            The model's tokenizer; needed by `max_demonstration_tokens` and `max_prompt_tokens`.
        return_stats (`bool`, *optional*, defaults to `False`):
            Also return the [`HPTDatasetStats`] of the call.
        **options:
            The fields of [`HPTDatasetOptions`] (which documents them): `prompt_template`, `keep_system_prompt`, the
            source columns `prompt_column`, `demonstration_column` and `solution_column`, the length budgets
            `max_demonstration_tokens`, `max_demonstration_chars`, `drop_long_demonstrations`, `max_prompt_tokens`,
            and `num_proc`.

    Returns:
        [`~datasets.Dataset`], or `(Dataset, HPTDatasetStats)` when `return_stats=True`.

    Example:

    ```python
    >>> from hpt_trl.data import load_hpt_dataset
    >>> dataset = load_hpt_dataset("openr1.parquet", prompt_template="llama", keep_system_prompt=False)
    >>> dataset.column_names
    ['prompt', 'demonstration', 'solution']
    ```
    """
    if not dataset_name:
        raise ValueError(f"dataset_name is empty: set it to a Hub dataset (e.g. {HPT_DATASET_NAME!r}) or a file.")
    dataset_options = HPTDatasetOptions(**options)
    raw = _load_raw(dataset_name, dataset_config, split)
    dataset, stats = prepare_hpt_dataset(raw, dataset_options, tokenizer)
    logger.info(f"Loaded {stats.num_rows_out} HPT rows from {dataset_name} ({stats}).")
    return (dataset, stats) if return_stats else dataset
