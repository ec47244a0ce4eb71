"""
Gate -> rows: the gate's decision written into TRL's generation batch, so that it travels with the rows it is for.

After [`~hpt_trl.gating.assign_rows`] has decided what every local row carries, [`add_demonstration_rows`] adds the
demonstration tensors and the per-row weights to the batch and neutralises every rollout that left RL in all the
tensors TRL computes from (loss, KL, importance sampling, metrics). TRL's shuffle and split then hand each micro-batch
its rows' decision, whatever the layout.
"""

import torch
from trl.trainer.utils import pad


def add_demonstration_rows(
    output: dict,
    kinds: torch.Tensor,
    rl_weight: torch.Tensor,
    demonstration_weight: torch.Tensor,
    demo_ids: list[list[int]],
    any_demonstration: bool,
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> None:
    """Add the demonstration tensors to the generation batch, weigh the rollouts, neutralise those that left RL."""
    device = kinds.device
    carries = (demonstration_weight > 0).tolist()
    left_rl = rl_weight == 0
    rows = [torch.tensor(ids if demo else [pad_token_id]) for ids, demo in zip(demo_ids, carries)]
    masks = [torch.full((len(ids),), int(demo), dtype=torch.long) for ids, demo in zip(rows, carries)]
    output["demonstration_ids"] = pad(
        rows, pad_token_id, padding_side="right", pad_to_multiple_of=pad_to_multiple_of
    ).to(device)
    output["demonstration_mask"] = pad(masks, 0, padding_side="right", pad_to_multiple_of=pad_to_multiple_of).to(
        device
    )
    output["demonstration_weight"] = demonstration_weight
    output["hpt_row_kind"] = kinds
    output["hpt_rl_weight"] = rl_weight
    # 0-dim, so TRL's shuffle and split hand it to every micro-batch. The same on all processes, since the gate
    # is computed from gathered rewards: every process then runs the same forwards, which DDP and ZeRO-3 need.
    output["hpt_has_demonstrations"] = torch.tensor(any_demonstration)

    # The soft gate scales a prompt's RL term through its advantages (every TRL loss is linear in them).
    # (masked_fill rather than the product alone, so that a NaN advantage of a dropped row cannot leak.)
    output["advantages"] = (output["advantages"] * rl_weight).masked_fill(left_rl, 0.0)
    # Rows that left RL must weigh nothing in anything TRL computes from the batch (loss, KL, importance
    # sampling, metrics), whatever their rollout tensors held.
    output["completion_mask"] = output["completion_mask"].masked_fill(left_rl.unsqueeze(1), 0)
    if "tool_mask" in output:
        output["tool_mask"] = output["tool_mask"].masked_fill(left_rl.unsqueeze(1), 0)
    for key in ("old_per_token_logps", "ref_per_token_logps", "sampling_per_token_logps"):
        if output.get(key) is not None:
            output[key] = output[key].masked_fill(left_rl.unsqueeze(1), 0.0)
    if output.get("importance_sampling_ratio") is not None:
        output["importance_sampling_ratio"] = output["importance_sampling_ratio"].masked_fill(
            left_rl.unsqueeze(1), 1.0
        )
