"""Checks of the trainer's inputs that need no model, run before the model is loaded (so bad input costs no compute)."""

import inspect
from collections.abc import Callable, Sequence

from trl.import_utils import is_vllm_available
from trl.trainer.utils import get_callable_name, get_config_model_id

from .demonstrations import validate_demonstration_column


# What TRL hands every reward function besides the dataset's columns (GRPOTrainer._calculate_rewards).
SUPPLIED_REWARD_ARGUMENTS = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric"}


def reward_function_names(reward_funcs) -> list[str]:
    """The names TRL gives the reward functions (`rewards/<name>/mean`), computed without loading reward models."""
    if reward_funcs is None:
        return []
    names = []
    for func in reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]:
        if isinstance(func, str):
            names.append(func.rstrip("/").split("/")[-1])
        elif hasattr(func, "config"):
            names.append(get_config_model_id(func.config).split("/")[-1])
        else:
            names.append(get_callable_name(func))
    return names


def resolve_gate_reward(gate_reward: str | int, names: Sequence[str]) -> int:
    """The index of the reward function that decides whether a rollout is correct."""
    if isinstance(gate_reward, int):
        if gate_reward >= len(names):
            raise ValueError(
                f"gate_reward={gate_reward} but there are {len(names)} reward functions {list(names)}: set "
                "gate_reward to the index or name of the one that says whether a rollout is correct."
            )
        return gate_reward
    if gate_reward not in names:
        raise ValueError(
            f"gate_reward={gate_reward!r} names no reward function; the reward functions are {list(names)}. Set "
            "gate_reward to one of these names or to an index."
        )
    return list(names).index(gate_reward)


def required_reward_columns(func: Callable) -> list[str]:
    """The dataset columns a plain reward function takes without a default (TRL passes every column by name)."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins and some callables have no signature: nothing to check
        return []
    return [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in SUPPLIED_REWARD_ARGUMENTS
    ]


def check_dataset_columns(dataset, reward_funcs, prompt_column: str = "prompt") -> None:
    """
    The dataset has a prompt column and every column a reward function needs. Without these, TRL would fail at the
    first step, after the model load and a generation, with a `KeyError` or `TypeError`.
    """
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # an iterable dataset of unknown schema: TRL finds out at the first batch
        return
    if prompt_column not in columns:
        raise ValueError(
            f"The training dataset has no '{prompt_column}' column (columns: {columns}). Rename the column that holds "
            f"the prompts to '{prompt_column}' (with train.py: set --dataset_prompt_column to its name)."
        )
    funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    for func in funcs:
        if func is None or isinstance(func, str) or hasattr(func, "config"):
            continue  # reward models read the prompt and completion only
        missing = [name for name in required_reward_columns(func) if name not in columns]
        if missing:
            raise ValueError(
                f"The reward function {get_callable_name(func)!r} takes {missing}, which the training dataset does "
                f"not have (columns: {columns}). Add the column(s), rename them, or give the parameter a default "
                "(with train.py, --dataset_solution_column names the column holding the ground truth)."
            )


def check_trainer_inputs(args, reward_funcs, train_dataset, rollout_func) -> int:
    """Every check `HPTTrainer` can make before loading the model; returns the gate reward's index."""
    if args.use_vllm and not is_vllm_available():
        raise ImportError(
            "use_vllm=True but vLLM is not installed. Install it on a CUDA machine with "
            "`pip install 'hpt-trl[vllm]'` (TRL's supported vLLM range), or set use_vllm=False to generate with "
            "transformers."
        )
    if args.uses_demonstrations and train_dataset is not None:
        validate_demonstration_column(train_dataset, args.demonstration_column)
    if train_dataset is not None and rollout_func is None:  # a rollout_func may add columns
        check_dataset_columns(train_dataset, reward_funcs)
    return resolve_gate_reward(args.gate_reward, reward_function_names(reward_funcs))
