"""
LUFFY and SRFT groups, as the authors run them: 7 + 1. In every group whose prompt carries a demonstration, the
demonstration takes the place of the group's first rollout (the row that carries it), is scored by the reward
functions as that row's completion, and enters the loss with that row's group advantage; the replaced rollout leaves
RL, so the group's RL term has `num_generations - 1` rows.
"""

import torch
from trl import GRPOTrainer
from trl.data_utils import is_conversational

from .gating import DEMONSTRATION_ROW, GateDecision


def score_demonstrations_in_groups(
    trainer: GRPOTrainer,
    gate: GateDecision,
    demonstrations: tuple[list[str], list[list[int]], list[bool]],
    inputs: list[dict],
    prompts: list,
    completions: list,
    rewards_per_func: torch.Tensor,
) -> torch.Tensor:
    """
    The gathered rewards with each carrying row's rollout scores replaced by its demonstration's.

    The demonstration is scored by TRL's `_calculate_rewards` (the row's dataset columns as kwargs), before TRL turns
    the rewards into group advantages. Each process scores the demonstrations of its own rows: one call per reward
    function, one demonstration per group. Every process must gather the same number of rows, so the calls are padded
    to the largest count with copies of a local demonstration, whose scores are dropped. The gate is the same on every
    process, so each knows every process's count and all of them call (or skip) the gather together.
    """
    n = trainer.num_generations
    num_rows, world, rank = len(prompts), trainer.accelerator.num_processes, trainer.accelerator.process_index
    carrying = (gate.demonstration_coef > 0).nonzero().squeeze(1)
    global_rows = (carrying * n).to(rewards_per_func.device)  # the first row of each group with a demonstration
    owner = global_rows // num_rows
    counts = torch.bincount(owner, minlength=world)
    slots = int(counts.max()) if global_rows.numel() else 0
    if slots == 0:
        return rewards_per_func
    local = (global_rows[owner == rank] - rank * num_rows).tolist()
    rows = local + [local[0] if local else 0] * (slots - len(local))
    texts, demo_ids, truncated = demonstrations
    scored = [
        trainer._tokenizer.decode(demo_ids[row], skip_special_tokens=True) if truncated[row] else texts[row]
        for row in rows
    ]
    if is_conversational({"prompt": prompts[0]}):
        demo_completions = [[{"role": "assistant", "content": text}] for text in scored]
    else:
        demo_completions = scored
    environments = trainer.environments
    # Rows that stand in only to pad the call must not write to the completions table or the metrics.
    trainer._log_completion_extra = trainer._log_metric = lambda *args: None
    if environments is not None:
        trainer.environments = [environments[row] for row in rows]
    try:
        scores = GRPOTrainer._calculate_rewards(
            trainer,
            [inputs[row] for row in rows],
            [prompts[row] for row in rows],
            demo_completions,
            [demo_ids[row] for row in rows],
        )
    finally:
        del trainer._log_completion_extra, trainer._log_metric
        trainer.environments = environments
    # Process p's j-th scored row is the j-th demonstration row in its slice of the batch.
    slot = torch.arange(global_rows.numel(), device=owner.device) - (torch.cumsum(counts, 0) - counts)[owner]
    rewards_per_func = rewards_per_func.clone()
    rewards_per_func[global_rows] = scores.view(world, slots, -1)[owner, slot]
    # TRL logs `completions` with the rewards: the table then shows what was scored in that row.
    for j, row in enumerate(local):
        completions[row] = demo_completions[j]
    return rewards_per_func


def replace_rollouts_with_demonstrations(
    output: dict, kinds: torch.Tensor, rl_weight: torch.Tensor, demonstration_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The row that carries a demonstration held the group's first rollout, whose place the demonstration took when the
    rewards were scored: TRL's advantage of that row is the demonstration's (kept as `demonstration_advantage`), and
    the rollout leaves RL (RL weight 0, so that [`~hpt_trl.batch_rows.add_demonstration_rows`] neutralises it).
    """
    carries = demonstration_weight > 0
    advantages = output["advantages"]
    output["demonstration_advantage"] = torch.where(carries.to(advantages.device), advantages, 0.0)
    kinds = torch.where(carries, DEMONSTRATION_ROW, kinds)
    return kinds, rl_weight.masked_fill(carries, 0.0)
