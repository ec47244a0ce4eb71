"""The HPT gate: which prompts of a generation batch are trained with SFT and which rows carry what."""

import torch


# Kind of each row of a generation batch after gating.
RL_ROW = 0  # a rollout of a prompt that stays in RL
DEMONSTRATION_ROW = 1  # the one row of a gated prompt that carries its demonstration
DROPPED_ROW = 2  # any other rollout of a gated prompt: outside both losses


def count_correct_rollouts(gate_rewards: torch.Tensor, num_generations: int, correct_threshold: float) -> torch.Tensor:
    """
    Count the correct rollouts of every prompt group.

    Args:
        gate_rewards (`torch.Tensor` of shape `(num_prompts * num_generations,)`):
            The gate reward of every rollout of the generation batch, gathered from all processes, with each prompt's
            `num_generations` rollouts contiguous (TRL's `RepeatSampler` order). `NaN` (a reward function that
            returned `None`) counts as not correct.
        num_generations (`int`):
            Rollouts per prompt.
        correct_threshold (`float`):
            A rollout is correct when its gate reward is at least this value.

    Returns:
        `torch.LongTensor` of shape `(num_prompts,)`: the number `P` of correct rollouts of each prompt.
    """
    if gate_rewards.numel() % num_generations != 0:
        raise ValueError(
            f"{gate_rewards.numel()} rewards do not split into groups of num_generations={num_generations}."
        )
    correct = gate_rewards >= correct_threshold  # NaN compares False
    return correct.view(-1, num_generations).sum(dim=1)


def assign_row_kinds(
    gated: torch.Tensor, num_generations: int, first_global_row: int, num_local_rows: int
) -> torch.Tensor:
    """
    Decide what each local row of the generation batch carries.

    A gated prompt's demonstration must count once, however its rollouts are spread over processes and micro-batches,
    so it goes on the prompt's first rollout row (in global order), which lives on exactly one process; the prompt's
    other rollouts are dropped.

    Args:
        gated (`torch.BoolTensor` of shape `(num_prompts,)`):
            Whether each prompt of the global generation batch is trained with SFT.
        num_generations (`int`):
            Rollouts per prompt.
        first_global_row (`int`):
            Global index of this process's first row (`process_index * num_local_rows` in TRL's layout).
        num_local_rows (`int`):
            Number of rows on this process.

    Returns:
        `torch.LongTensor` of shape `(num_local_rows,)` with values `RL_ROW`, `DEMONSTRATION_ROW` or `DROPPED_ROW`.
    """
    global_rows = torch.arange(first_global_row, first_global_row + num_local_rows, device=gated.device)
    row_gated = gated[global_rows // num_generations]
    is_first_of_group = global_rows % num_generations == 0
    kinds = torch.full((num_local_rows,), RL_ROW, dtype=torch.long, device=gated.device)
    kinds[row_gated & is_first_of_group] = DEMONSTRATION_ROW
    kinds[row_gated & ~is_first_of_group] = DROPPED_ROW
    return kinds


def select_rows(batch: dict, rows: torch.Tensor, batch_size: int) -> dict:
    """
    Take the given rows of every per-row entry of a TRL batch dict.

    Per-row entries are tensors and lists whose first dimension is `batch_size`; anything else (e.g. the 0-dim
    `num_items_in_batch`) is shared by all rows and kept as is.
    """
    selected = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == batch_size:
            selected[key] = value[rows]
        elif isinstance(value, list) and len(value) == batch_size:
            selected[key] = [value[i] for i in rows.tolist()]
        else:
            selected[key] = value
    return selected
