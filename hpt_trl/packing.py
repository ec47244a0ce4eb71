"""
Training forwards over the tokens that carry loss: the chosen rows only, without padding between them.

A sequence to forward is a context (the prompt) followed by the tokens whose log-probabilities are wanted (a rollout or
a demonstration). [`plan_forward`] lays sequences out without padding (packed rows: `position_ids` restart at every
sequence, which transformers turns into a block-diagonal causal mask, and flash-attention into its varlen kernel) or
right-padded into a rectangle no wider than the longest sequence; [`split_scored`] reads each sequence's
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


def plan_forward(sequences: list[Sequence], layout: str, pad_token_id: int) -> ForwardPlan:
    """
    Lay the sequences out for one forward.

    `"packed"`: all in one row (flash-attention's varlen kernel keeps attention per sequence). `"bins"`: rows as wide
    as the longest sequence, each holding as many sequences as fit (first-fit decreasing), so that a dense attention
    mask costs no more than a padded batch while almost no position is padding. `"padded"`: one sequence per row,
    right-padded to the longest, with an attention mask. Packed rows mark their sequences by restarting
    `position_ids`; their trailing padding sits after every real token, so causal attention never reads it.
    """
    tokens = [torch.cat([s.context, s.scored]) for s in sequences]
    labels = [torch.cat([torch.full_like(s.context, -100), s.scored]) for s in sequences]
    # In the shifted output, position i holds the log-probability of token i + 1.
    first_scored = [len(s.context) - 1 for s in sequences]
    width = max(len(t) for t in tokens)
    if layout == "padded":
        rows = [[i] for i in range(len(tokens))]
    elif layout == "packed":
        rows = [list(range(len(tokens)))]
        width = sum(len(t) for t in tokens)
    elif layout == "bins":
        rows, free = [], []
        for i in sorted(range(len(tokens)), key=lambda i: -len(tokens[i])):
            fit = next((b for b, room in enumerate(free) if room >= len(tokens[i])), None)
            if fit is None:
                rows.append([i])
                free.append(width - len(tokens[i]))
            else:
                rows[fit].append(i)
                free[fit] -= len(tokens[i])
    else:
        raise ValueError(f"Unknown layout {layout!r}: use 'packed', 'bins' or 'padded'.")

    template = tokens[0]
    input_ids = template.new_full((len(rows), width), pad_token_id)
    padded_labels = template.new_full((len(rows), width), -100)
    position_ids = template.new_zeros((len(rows), width))
    attention_mask = template.new_zeros((len(rows), width))
    spans = [None] * len(tokens)
    for row, members in enumerate(rows):
        offset = 0
        for i in members:
            length = len(tokens[i])
            input_ids[row, offset : offset + length] = tokens[i]
            padded_labels[row, offset : offset + length] = labels[i]
            position_ids[row, offset : offset + length] = torch.arange(length, device=template.device)
            attention_mask[row, offset : offset + length] = 1
            spans[i] = (row, offset + first_scored[i], len(sequences[i].scored))
            offset += length
        # Trailing padding restarts its positions, so that it forms a block of its own.
        position_ids[row, offset:] = torch.arange(width - offset, device=template.device)
    padded = layout == "padded"
    return ForwardPlan(
        input_ids=input_ids,
        labels=padded_labels,
        attention_mask=attention_mask if padded else None,
        position_ids=None if padded else position_ids,
        spans=spans,
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
