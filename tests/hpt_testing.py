"""Datasets, rewards and configs shared by the trainer tests (and the multi-process script they launch)."""

import re

import torch
from datasets import Dataset

from hpt_trl import HPTConfig


NUM_GENERATIONS = 4
# The authors' soft table (mix_trainer.py, soft_type 0), written out here independently of hpt_trl.gating.
SOFT_RL = [0.0, 0.125, 0.25, 0.5, 1.0]
SOFT_DEMO = [1.0, 0.5, 0.25, 0.125, 0.0]


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


def scripted_rollouts(prompts, trainer):
    """
    A `rollout_func` whose completions depend only on the prompt and the rollout's index `k` in its group (global
    row order), so every batch layout and process count trains on the same generation batch. The completion starts
    with `k`, and its length varies within the group.
    """
    tokenizer = trainer.processing_class
    first_row = trainer.accelerator.process_index * len(prompts)
    prompt_ids, completion_ids = [], []
    for row, prompt in enumerate(prompts, start=first_row):
        k = row % trainer.num_generations
        prompt_ids.append(tokenizer(prompt)["input_ids"])
        text = f"{k}" + "ab" * (1 + (len(prompt) + k) % 3)
        completion_ids.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def correct_first_rollouts(completions, pid, **kwargs):
    """The rollouts `k < pid % (n + 1)` of prompt `pid` are correct (`k` leads a scripted completion): P = pid % 5."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(t[:1].isdigit() and int(t[0]) < p % (NUM_GENERATIONS + 1)) for t, p in zip(texts, pid)]


# Every gate and demonstration loss, each with an entropy bonus over rollouts and demonstrations.
LAYOUT_MODES = {
    "switch": dict(gamma=1),
    "soft": dict(gate_strategy="soft"),
    "adaptive": dict(gate_strategy="adaptive"),
    "always-sft": dict(gate_strategy="always"),
    "luffy": dict(gate_strategy="always", demonstration_loss="off_policy"),
    "srft": dict(gate_strategy="always", demonstration_loss="srft"),
    "grpo-authors-entropy": dict(gamma=-1),  # the paper's GRPO baseline: HPT's bonus over its rollouts
}


def one_step_update(model_dir, output_dir, mode: str, per_device_train_batch_size: int, accumulation: int):
    """
    The parameter change of one plain-SGD step (lr 1, no clipping: the negative gradient) on the generation batch of
    8 prompts x 4 scripted rollouts, split into `per_device_train_batch_size` rows x `accumulation` micro-batches on
    each process.
    """
    from hpt_trl import HPTTrainer

    args = make_config(
        output_dir,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        entropy_coef=0.01,
        entropy_coverage="rollouts_and_demonstrations",
        **LAYOUT_MODES[mode],
    )
    trainer = HPTTrainer(
        model_dir,
        [correct_first_rollouts, length_parity_reward],
        args=args,
        train_dataset=make_dataset(num_prompts=8, conversational=False),
        rollout_func=scripted_rollouts,
    )
    before = parameters(trainer.model)
    trainer.train()
    after = parameters(trainer.model)
    logs = trainer.state.log_history[0]
    ratio = logs["hpt/sft_prompt_ratio"]
    assert (ratio == 0) if mode.startswith("grpo") else (0 < ratio and (mode != "switch" or ratio < 1))
    return {name: after[name] - before[name] for name in before}


def position_rewards(pid):
    """Prompt `pid` gets exactly P = pid % 5 correct rollouts: the first P rows of its group (one process, in order)."""
    rewards, seen = [], {}
    for p in pid:
        position = seen.get(p, 0)
        seen[p] = position + 1
        rewards.append(float(position < p % (NUM_GENERATIONS + 1)))
    return rewards


def correct_by_pid(completions, pid, **kwargs):
    """
    A verifier for the tiny model: a completion with a boxed answer (the demonstrations) is right when the answer is
    `2 * pid`; the rollouts, which never write one, are right by position (`position_rewards`).
    """
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    boxed = [re.search(r"\\boxed\{([^}]*)\}", text) for text in texts]
    by_position = iter(position_rewards([p for p, b in zip(pid, boxed) if b is None]))
    return [float(b.group(1) == str(2 * p)) if b else next(by_position) for p, b in zip(pid, boxed)]


def load_benchmark(name: str):
    """A script of `benchmarks/` (not a package) loaded as a module, e.g. `load_benchmark("compare_methods")`."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
