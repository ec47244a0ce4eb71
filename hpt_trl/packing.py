"""
Training forwards over the tokens that carry loss: the chosen rows only, without padding between them.

A sequence to forward is a context (the prompt) followed by the tokens whose log-probabilities are wanted (a rollout or
a demonstration). [`plan_forward`] lays sequences out either packed into one row (padding-free: `position_ids` restart
at every sequence, which transformers turns into a block-diagonal causal mask, and flash-attention into its varlen
kernel) or right-padded into a rectangle no wider than the longest sequence; [`split_scored`] reads each sequence's
log-probabilities back out of the model's per-token output.
"""

from dataclasses import dataclass

import torch


@dataclass
class Sequence:
    context: torch.Tensor  # 1-D token ids, at least one token
    scored: torch.Tensor  # 1-D token ids whose log-probabilities are wanted


@dataclass
class ForwardPlan:
    input_ids: torch.Tensor
    labels: torch.Tensor  # -100 everywhere but the scored tokens (TRL's fused LM head scores the others)
    attention_mask: torch.Tensor | None  # padded layout only
    position_ids: torch.Tensor | None  # packed layout only
    # For each sequence: (row, index of its first scored token in the shifted per-token output, number scored).
    spans: list[tuple[int, int, int]]

    @property
    def num_positions(self) -> int:
        return self.input_ids.numel()


def sequences_from_batch(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, rows: list[int]
) -> list[Sequence] | None:
    """
    Cut the given rows of TRL's `(prompt | completion)` rectangle into sequences without padding.

    Prompts are left-padded and completions right-padded in TRL's batches. Returns `None` when a row does not have
    that shape (a hole inside the completion mask, or an empty prompt), in which case the caller keeps the rectangle.
    """
    prompt_width = input_ids.size(1) - logits_to_keep
    sequences = []
    for row in rows:
        prompt_mask = attention_mask[row, :prompt_width].bool()
        completion_mask = attention_mask[row, prompt_width:].bool()
        num_completion = int(completion_mask.sum())
        if not prompt_mask.any() or not completion_mask[:num_completion].all():
            return None
        sequences.append(
            Sequence(
                context=input_ids[row, :prompt_width][prompt_mask],
                scored=input_ids[row, prompt_width : prompt_width + num_completion],
            )
        )
    return sequences


def plan_forward(sequences: list[Sequence], packed: bool, pad_token_id: int) -> ForwardPlan:
    """Lay the sequences out for one forward: packed into one row, or right-padded to the longest one."""
    tokens = [torch.cat([s.context, s.scored]) for s in sequences]
    labels = [torch.cat([torch.full_like(s.context, -100), s.scored]) for s in sequences]
    # In the shifted output, position i holds the log-probability of token i + 1.
    first_scored = [len(s.context) - 1 for s in sequences]
    if packed:
        offsets = torch.tensor([0] + [len(t) for t in tokens]).cumsum(0).tolist()
        return ForwardPlan(
            input_ids=torch.cat(tokens).unsqueeze(0),
            labels=torch.cat(labels).unsqueeze(0),
            attention_mask=None,
            position_ids=torch.cat([torch.arange(len(t), device=t.device) for t in tokens]).unsqueeze(0),
            spans=[
                (0, offsets[i] + first, len(s.scored)) for i, (s, first) in enumerate(zip(sequences, first_scored))
            ],
        )
    width = max(len(t) for t in tokens)
    input_ids = tokens[0].new_full((len(tokens), width), pad_token_id)
    padded_labels = tokens[0].new_full((len(tokens), width), -100)
    attention_mask = tokens[0].new_zeros((len(tokens), width))
    for row, (t, lab) in enumerate(zip(tokens, labels)):
        input_ids[row, : len(t)] = t
        padded_labels[row, : len(t)] = lab
        attention_mask[row, : len(t)] = 1
    return ForwardPlan(
        input_ids=input_ids,
        labels=padded_labels,
        attention_mask=attention_mask,
        position_ids=None,
        spans=[(row, first, len(s.scored)) for row, (s, first) in enumerate(zip(sequences, first_scored))],
    )


def split_scored(per_token: torch.Tensor, plan: ForwardPlan) -> list[torch.Tensor]:
    """The per-token output (log-probabilities, entropies) of each planned sequence's scored tokens."""
    return [per_token[row, start : start + length] for row, start, length in plan.spans]


def to_rectangle(
    values: list[torch.Tensor], rows: list[int], num_rows: int, width: int, like: torch.Tensor
) -> torch.Tensor:
    """
    Put per-sequence values back at their rows of a `(num_rows, width)` tensor, zeros elsewhere.

    `like` is a 0-dim zero from the same forward: adding it to the filler rows keeps the result connected to the
    forward's graph even when no row was kept, so that `backward()` still reaches every parameter.
    """
    by_row = dict(zip(rows, values, strict=True))
    filler = like.new_zeros(width) + like
    padded = [
        torch.nn.functional.pad(by_row[row], (0, width - len(by_row[row]))) if row in by_row else filler
        for row in range(num_rows)
    ]
    return torch.stack(padded)
