"""Datasets, rewards and configs shared by the trainer tests (and the multi-process script they launch)."""

import torch
from datasets import Dataset

from hpt_trl import HPTConfig


NUM_GENERATIONS = 4


def demonstration_for(pid: int) -> str:
    return f"{pid}+{pid}={2 * pid}. \\boxed{{{2 * pid}}}"


def make_dataset(num_prompts: int = 8, conversational: bool = True, demonstration_column: str = "demonstration"):
    """Prompts `pid+pid=` with their worked demonstration; `pid` lets a reward decide correctness per prompt."""
    prompts = [f"{pid}+{pid}=" for pid in range(num_prompts)]
    if conversational:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    return Dataset.from_dict(
        {
            "prompt": prompts,
            demonstration_column: [demonstration_for(pid) for pid in range(num_prompts)],
            "pid": list(range(num_prompts)),
        }
    )


def odd_prompts_wrong(completions, pid, **kwargs):
    """Every rollout of an odd prompt is wrong, every rollout of an even prompt is right."""
    return [float(p % 2 == 0) for p in pid]


def length_parity_reward(completions, **kwargs):
    """A reward with spread inside groups, so the RL term is not zero."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(len(t) % 2) for t in texts]


def make_config(output_dir, **overrides) -> HPTConfig:
    return HPTConfig(**{**base_kwargs(output_dir), **overrides})


def base_kwargs(output_dir) -> dict:
    """Small, fast, deterministic settings shared by HPTConfig and GRPOConfig in the tests."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        num_generations=NUM_GENERATIONS,
        max_completion_length=12,
        max_steps=2,
        learning_rate=1e-3,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        bf16=False,  # TRL defaults to bf16 autocast; exact comparisons need fp32
    )


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def record_generation_batches(trainer) -> list[dict]:
    """Wrap the trainer's generation step to keep every gated generation batch it produces."""
    batches = []
    original = trainer._generate_and_score_completions

    def recording(inputs):
        output = original(inputs)
        batches.append({"pids": [x["pid"] for x in inputs], **output})
        return output

    trainer._generate_and_score_completions = recording
    return batches


def write_authors_parquet(path, num_rows: int = 8) -> str:
    """Rows in the schema of the authors' training set (verl parquet, as Elliott/Openr1-Math-46k-8192)."""
    import pandas as pd

    rows = [
        {
            "data_source": "openr1",
            "prompt": [
                {"role": "system", "content": "Put the final answer in \\boxed{}."},
                {"role": "user", "content": f"{pid}+{pid}="},
            ],
            "target": [{"role": "assistant", "content": demonstration_for(pid)}],
            "ability": "math",
            "reward_model": {"ground_truth": str(2 * pid), "style": "rule"},
            "extra_info": {"index": pid, "split": "train"},
        }
        for pid in range(num_rows)
    ]
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def write_tiny_recipe(folder, model_dir: str, **fields) -> str:
    """A train.py recipe for the tiny model on `write_authors_parquet` data; `fields` add or override keys."""
    from pathlib import Path

    folder = Path(folder)
    values = {
        "model_name_or_path": model_dir,
        "dataset_name": write_authors_parquet(folder / "openr1.parquet"),
        "max_prompt_tokens": 256,
        "max_demonstration_tokens": 64,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 24,
        "learning_rate": "1.0e-3",
        "lr_scheduler_type": "constant",
        "gamma": 0,
        "bf16": "false",
        "report_to": "none",
        "save_steps": 2,
        "logging_steps": 1,
        "seed": 0,
        **fields,
    }
    path = folder / "recipe.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))
    return str(path)
