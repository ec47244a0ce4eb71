"""
The weight of one RL token against one demonstration token in a recipe's HPT loss, measured, beside the authors' actor.

    OMP_NUM_THREADS=1 python benchmarks/loss_weights.py --recipe recipes/qwen2.5-math-7b/hpt.yaml

The recipe is read with `train.py`'s parser; its loss knobs (`gamma`, `sft_loss_coef`, `rl_loss_coef`, `loss_type`,
`scale_rewards`, `max_completion_length`, `num_generations`, `per_device_train_batch_size`,
`gradient_accumulation_steps`) train one on-policy update of the tiny local model on scripted rollouts: half of the
prompts have no correct rollout (gated to SFT, with demonstrations of different lengths), the others have correct and
wrong rollouts (RL). The gradient of the loss with respect to every trained token's log-probability is recorded. An
RL token's weight is that gradient divided by its advantage; a demonstration token's weight is the gradient itself
(both with the sign of a loss to descend). The authors' actor (`loss_remove_token_mean=True`: an on-policy token
weighs `A / 8192`; SFT: the token mean of the demonstration of a micro-batch, one demonstration per micro-batch;
both averaged over their 8 ranks) gives the ratio `|d| / (8192 * sft_loss_coef)` for a demonstration of `|d|`
tokens. The script prints both ratios per demonstration and their quotient (1 means the authors' weighting).
"""

import argparse
import sys
import tempfile
from pathlib import Path

from datasets import Dataset


ROOT = Path(__file__).resolve().parents[1]
AUTHORS_MAX_RESPONSE_LENGTH = 8192  # the authors' divisor of the RL token sum (data.max_response_length)
LOSS_KNOBS = (
    "gamma",
    "sft_loss_coef",
    "rl_loss_coef",
    "loss_type",
    "scale_rewards",
    "max_completion_length",
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
)


def scripted_rollouts(prompts, trainer):
    """Rollout `k` of a prompt is `k` then a few letters: deterministic, with lengths that vary in the group."""
    tokenizer = trainer.processing_class
    first_row = trainer.accelerator.process_index * len(prompts)
    prompt_ids, completion_ids = [], []
    for row, prompt in enumerate(prompts, start=first_row):
        k = row % trainer.num_generations
        prompt_ids.append(tokenizer(prompt)["input_ids"])
        text = f"{k}" + "ab" * (1 + k % 3)
        completion_ids.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def half_solved(completions, pid, **kwargs):
    """Odd prompts: every rollout wrong (gated). Even prompts: rollouts 0 and 1 right, the others wrong (RL)."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(p % 2 == 0 and t[:1] in ("0", "1")) for t, p in zip(texts, pid)]


def recipe_config(recipe: str, output_dir: str):
    sys.path.insert(0, str(ROOT))
    from hpt_trl import HPTConfig
    from train import make_parser

    args = make_parser().parse_args_and_config(args=["--config", recipe, "--use_cpu", "true"])[1]
    knobs = {name: getattr(args, name) for name in LOSS_KNOBS}
    # One on-policy update (the second of the authors' two updates has the same weights, times the ratio).
    knobs["steps_per_generation"] = knobs["gradient_accumulation_steps"]
    config = HPTConfig(
        output_dir=output_dir,
        **knobs,
        max_steps=1,
        optim="sgd",
        learning_rate=0.0,
        max_grad_norm=0.0,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        padding_free=False,
        skip_zero_advantage_rows=False,
    )
    return config, knobs


def measure(recipe: str) -> dict:
    from hpt_trl import HPTTrainer
    from hpt_trl.builtin_task.tiny_model import save_tiny_model

    with tempfile.TemporaryDirectory() as folder:
        config, knobs = recipe_config(recipe, str(Path(folder) / "run"))
        rows_per_update = config.per_device_train_batch_size * config.gradient_accumulation_steps
        num_prompts = rows_per_update // config.num_generations
        # Demonstrations of 9 to 9 + 6 * (num_prompts / 2) characters: one token per character.
        dataset = Dataset.from_dict(
            {
                "prompt": [f"{pid}+{pid}=" for pid in range(num_prompts)],
                "demonstration": [f"{2 * pid} " + "x" * (3 * pid) + "\\boxed{1}" for pid in range(num_prompts)],
                "pid": list(range(num_prompts)),
            }
        )
        trainer = HPTTrainer(
            str(save_tiny_model(Path(folder) / "model")),
            half_solved,
            args=config,
            train_dataset=dataset,
            rollout_func=scripted_rollouts,
        )
        recorded = []
        forward = trainer._forward_sequences

        def recording_forward(*args, **kwargs):
            logps, entropies, aux_loss, anchor = forward(*args, **kwargs)
            for lp in logps:
                lp.retain_grad()
            recorded.append(logps)
            return logps, entropies, aux_loss, anchor

        trainer._forward_sequences = recording_forward
        batches = []
        generate = trainer._generate_and_score_completions

        def recording_generate(inputs):
            output = generate(inputs)
            batches.append(output)
            return output

        trainer._generate_and_score_completions = recording_generate
        trainer.train()

    # The scripted rollouts have at most 8 tokens (EOS included), every demonstration at least 12.
    rl_weights, demo_weights = [], []
    advantages = sorted({round(float(a), 6) for a in batches[0]["advantages"] if a != 0})
    for logps in recorded:
        for lp in logps:
            gradient = lp.grad
            if gradient is None:
                continue
            (rl_weights if len(lp) <= 8 else demo_weights).append(-gradient)
    return {
        "knobs": knobs,
        "rows_per_update": rows_per_update,
        "rl_weights": rl_weights,
        "demo_weights": demo_weights,
        "advantages": advantages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "qwen2.5-math-7b" / "hpt.yaml"))
    args = parser.parse_args()
    result = measure(args.recipe)
    knobs = result["knobs"]
    length, sft = knobs["max_completion_length"], knobs["sft_loss_coef"]
    # An RL token's weight divided by its advantage: the same for every RL token under dr_grpo.
    per_advantage = sorted({abs(float(w[0])) for w in result["rl_weights"]})
    advantages = [abs(a) for a in result["advantages"]]
    rl_unit = per_advantage[-1] / max(advantages)
    print(f"recipe {args.recipe}: {knobs}")
    print(
        f"rows per update on this machine N = {result['rows_per_update']}, max_completion_length L = {length}: "
        f"RL token weight / |advantage| = {rl_unit:.6g}, x N x L = {rl_unit * result['rows_per_update'] * length:.6f}"
    )
    print(
        "| demonstration tokens |d| | measured RL/SFT token weight | authors' |d| / (8192 x sft_loss_coef) | ratio |"
    )
    print("| --- | --- | --- | --- |")
    quotients = []
    for weights in sorted(result["demo_weights"], key=len):
        measured = rl_unit / float(weights.mean())
        authors = len(weights) / (AUTHORS_MAX_RESPONSE_LENGTH * sft)
        quotients.append(measured / authors)
        print(f"| {len(weights)} | {measured:.6g} | {authors:.6g} | {measured / authors:.6f} |")
    print(
        f"measured / authors' over {len(quotients)} demonstrations: min {min(quotients):.6f}, max {max(quotients):.6f}"
    )


if __name__ == "__main__":
    main()
