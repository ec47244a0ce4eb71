"""
Train a model with Hybrid Post-Training (HPT).

Every field of `HPTScriptArguments` (data), `HPTConfig` (HPT and everything of TRL's `GRPOConfig`) and TRL's
`ModelConfig` can be set in a YAML recipe and overridden on the command line:

    # the paper's run: 8 GPUs, vLLM colocated, DeepSpeed ZeRO-3
    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml train.py \
        --config recipes/qwen2.5-math-7b/hpt.yaml

    # anything from the command line
    python train.py --config recipes/qwen2.5-math-1.5b/hpt.yaml --gamma 1 --output_dir outputs/gamma1

The run resumes from the newest checkpoint in `output_dir` (or `--resume_from_checkpoint PATH`), saves the model with
a model card naming HPT, the paper and the recipe, and pushes it to the Hub when `push_to_hub` is set.
"""

import json
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from transformers import AutoTokenizer, set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from hpt_trl import HPTConfig, HPTTrainer
from hpt_trl.data import HPTScriptArguments, get_reward_funcs, load_hpt_dataset


logger = get_logger(__name__)


def resolve_checkpoint(training_args: HPTConfig) -> str | None:
    """The checkpoint to resume from: the one asked for, else the newest in `output_dir`, so a killed run goes on."""
    requested = training_args.resume_from_checkpoint
    if requested not in (None, "", "true", "True", "last"):
        if not Path(requested).is_dir():
            raise ValueError(f"resume_from_checkpoint={requested!r} is not a checkpoint folder.")
        return requested
    last = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
    if last is not None:
        logger.info(f"Resuming from {last}, the newest checkpoint in output_dir={training_args.output_dir}.")
    elif requested:
        raise ValueError(f"resume_from_checkpoint is set but {training_args.output_dir} holds no checkpoint.")
    return last


def main(script_args: HPTScriptArguments, training_args: HPTConfig, model_args: ModelConfig) -> HPTTrainer:
    set_seed(training_args.seed)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    train_dataset = load_hpt_dataset(**script_args.loader_kwargs(), tokenizer=tokenizer)
    reward_funcs = get_reward_funcs(script_args.reward_funcs)

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}

    trainer = HPTTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))

    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(dataset_name=script_args.dataset_name, tags=recipe_tags())
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name, tags=recipe_tags())
        logger.info(f"Pushed to https://huggingface.co/{trainer.hub_model_id}")
    return trainer


def recipe_tags() -> list[str]:
    """Name the recipe on the model card, so a pushed checkpoint says how it was trained."""
    if "--config" in sys.argv:
        return [f"recipe:{Path(sys.argv[sys.argv.index('--config') + 1]).as_posix()}"]
    return []


def make_parser() -> TrlParser:
    return TrlParser((HPTScriptArguments, HPTConfig, ModelConfig))


def cpu_deepspeed_arguments() -> list[str]:
    """
    Set up the process group for DeepSpeed launched on several CPU processes, and return the arguments it needs.

    With CPU-only torch, accelerate leaves the backend unset: transformers then counts one process while DeepSpeed
    counts all of them, and DeepSpeed's batch-size check fails. A gloo state created before the config is parsed, and
    kept by the trainer (`use_configured_state`), makes both count the same processes. GPUs need none of this.
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if not (distributed and deepspeed) or torch.cuda.is_available():
        return []
    PartialState(backend="gloo")
    return ["--accelerator_config", json.dumps({"use_configured_state": True})]


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] + cpu_deepspeed_arguments()
    script_args, training_args, model_args = make_parser().parse_args_and_config(args=argv)
    trainer = main(script_args, training_args, model_args)
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish trackers, tear down the process group
        trainer.end()
