"""HPT's section of the model card: the final training metrics and the unified estimator's parts of the run."""

import os


# The metrics a reader of the model card wants first: what HPT did and how well the policy did at the end.
CARD_METRICS = (
    "reward",
    "hpt/group_accuracy",
    "hpt/sft_prompt_ratio",
    "hpt/sft_loss",
    "hpt/off_policy_loss",
    "hpt/rl_loss",
    "hpt/gamma",
    "completions/mean_length",
    "entropy",
    "train_loss",
)


def append_hpt_section(args, state, gamma) -> None:
    """Append the section to the card TRL wrote in `args.output_dir` (nothing when no metric was logged)."""
    last = {}
    for entry in state.log_history:
        last.update({key: entry[key] for key in CARD_METRICS if entry.get(key) is not None})
    if not last:
        return
    rows = "\n".join(f"| `{key}` | {last[key]:.4g} |" for key in CARD_METRICS if key in last)
    parts = "\n".join(f"| {key} | {value} |" for key, value in args.upge_parts.items())
    section = (
        f"\n\n## Final training metrics\n\nLast logged values at step {state.global_step}, gamma={gamma}, "
        f"sft_loss_coef={args.sft_loss_coef}.\n\n| metric | value |\n| --- | --- |\n{rows}\n"
        f"\n## Unified estimator parts\n\n| part | setting |\n| --- | --- |\n{parts}\n"
    )
    with open(os.path.join(args.output_dir, "README.md"), "a") as card:
        card.write(section)
