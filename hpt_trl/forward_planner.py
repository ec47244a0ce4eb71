"""
The cost layer of the training forward: which rows of a micro-batch to forward, and how to lay them out.

[`PlannedForward`] is a mixin for [`~trl.GRPOTrainer`] subclasses. Its one seam is [`PlannedForward.planned_forward`]:
a loss names the rows it needs (rows without loss tokens are not forwarded) and extra sequences to score in the same
forward (HPT's demonstrations), then calls TRL's `_compute_loss` as it is. TRL's loss asks for log-probs through
`_get_per_token_logps_and_entropies`, which this mixin overrides: the named rows (and the extra sequences) are
packed without padding (`padding_free`) or padded no wider than the longest of them, and the result is handed back as
TRL's `(batch, completion)` rectangle, zeros in the rows left out. The loss is the same with the planner on or off;
only the cost changes (`benchmarks/step_cost.py`). The planner knows rows and sequences, not the gate that chose them.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from trl.trainer.utils import selective_log_softmax

from .gating import select_rows
from .packing import Sequence, plan_forward, sequences_from_batch, split_scored, to_rectangle


def loss_mask(batch: dict) -> torch.Tensor:
    """The tokens TRL's loss counts: the completion mask, without tool-output tokens when there are any."""
    if "tool_mask" in batch:
        return batch["completion_mask"] * batch["tool_mask"]
    return batch["completion_mask"]


@dataclass
class ForwardRequest:
    """What the next training forward must cover: rows of TRL's batch, and extra sequences (demonstrations)."""

    rows: list[int]
    extra: list[Sequence] = field(default_factory=list)
    # Filled by the forward: the extra sequences' log-probs and entropies, and the rows' (batch, completion) tensors.
    extra_logps: list[torch.Tensor] = field(default_factory=list)
    extra_entropies: list[torch.Tensor] = field(default_factory=list)
    row_logps: torch.Tensor | None = None
    row_entropies: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # MoE load-balancing loss of the forward, which TRL adds to its loss


class PlannedForward:
    """Mixin: forwards only the rows a loss names, packed or tightly padded (see the module docstring)."""

    _forward_request: ForwardRequest | None = None

    def _setup_forward_planner(self, padding_free: bool | None, skip_zero_advantage_rows: bool) -> None:
        attention = str(getattr(self.model.config, "_attn_implementation", None) or "")
        flash = "flash" in attention
        self.padding_free = padding_free if padding_free is not None else flash
        # Flash-attention's varlen kernel takes one packed row; a dense mask (sdpa, eager) takes rows as wide as the
        # longest sequence, several sequences to a row, so attention costs what a padded batch costs.
        self._layout = ("packed" if flash else "bins") if self.padding_free else "padded"
        self.skip_zero_advantage_rows = skip_zero_advantage_rows

    def rows_to_forward(self, inputs: dict, skip_zero_advantage: bool) -> tuple[dict, torch.Tensor]:
        """
        The rows of a micro-batch whose loss tokens need a forward: rows without loss tokens (gated rollouts, masked
        truncations) never, and with `skip_zero_advantage` not the rows whose advantage is 0 either, whose
        gradient is 0 in every loss without a KL or entropy term. Those rows' completion mask is cleared in the
        returned batch, so that TRL's entropy and clip metrics describe the forwarded rows only.
        """
        rows = loss_mask(inputs).sum(dim=1) > 0
        if not skip_zero_advantage:
            return inputs, rows
        advantages = inputs["advantages"]
        zero = advantages == 0 if advantages.dim() == 1 else (advantages == 0).all(dim=1)
        idle = rows & zero
        inputs = {**inputs, "completion_mask": inputs["completion_mask"].masked_fill(idle.unsqueeze(1), 0)}
        return inputs, rows & ~zero

    @contextmanager
    def planned_forward(self, request: ForwardRequest):
        """
        Within the block, TRL's next call of `_get_per_token_logps_and_entropies` (the training loss's forward)
        covers `request` and fills it in. TRL's hook takes no such argument, so the request is held for that call.
        """
        self._forward_request = request
        try:
            yield request
        finally:
            self._forward_request = None

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal_inputs,
    ):
        # Only the training loss names the rows to forward; reference/old log-probs are packed when padding-free.
        request, self._forward_request = self._forward_request, None
        num_rows = input_ids.size(0)
        rows = request.rows if request is not None else list(range(num_rows))
        sequences = None
        if not any(value is not None for value in multimodal_inputs.values()) and (request or self.padding_free):
            sequences = sequences_from_batch(input_ids, attention_mask, logits_to_keep, rows)
        if request is not None and request.extra and sequences is None:
            raise RuntimeError(
                "HPT could not cut this batch into prompt and completion sequences (an empty prompt, or a completion "
                "mask with holes) to score the demonstrations in the same forward: report this with your data."
            )
        keeps_everything = request is not None and not request.extra and len(rows) == num_rows
        if sequences is None or (keeps_everything and not self.padding_free):
            # TRL's own rectangle: nothing to leave out, nothing to pack (or a batch that is not TRL's layout).
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **multimodal_inputs,
            )
            if request is not None:
                request.row_logps, request.row_entropies, request.aux_loss = logps, entropies, aux
            return logps, entropies, aux

        extra = request.extra if request is not None else []
        # One forward per chunk of `batch_size` rows, as in TRL: every process then runs the same number of forwards.
        chunk = len(rows) if request is not None else (batch_size or num_rows)
        starts = range(0, max(len(rows), 1), max(chunk, 1))
        logps, entropies, aux_losses = [], [], []
        for start in starts:
            chunk_sequences = sequences[start : start + chunk] + (extra if start == starts[-1] else [])
            chunk_logps, chunk_entropies, aux_loss, anchor = self._forward_sequences(
                model, chunk_sequences, input_ids, compute_entropy, compute_aux_loss
            )
            logps += chunk_logps
            entropies += chunk_entropies
            aux_losses.append(aux_loss)
        if request is not None:
            request.extra_logps = logps[len(rows) :]
            request.extra_entropies = entropies[len(rows) :]
        out_logps = to_rectangle(logps[: len(rows)], rows, num_rows, logits_to_keep, like=anchor)
        out_entropies = None
        if compute_entropy:
            out_entropies = to_rectangle(entropies[: len(rows)], rows, num_rows, logits_to_keep, like=anchor.detach())
        aux = torch.stack(aux_losses).mean() if compute_aux_loss else None
        if request is not None:
            request.row_logps, request.row_entropies, request.aux_loss = out_logps, out_entropies, aux
        return out_logps, out_entropies, aux

    def _forward_sequences(self, model, sequences, input_ids, compute_entropy, compute_aux_loss):
        """
        Log-probs (and entropies) of the scored tokens of each sequence, from one forward, and a 0-dim zero of that
        forward's graph that keeps the caller's output connected to it even when no sequence was scored.
        """
        placeholder = not sequences
        if placeholder:
            # Every process must forward (DDP, ZeRO-3): two tokens, nothing scored but the placeholder itself.
            sequences = [Sequence(context=input_ids[0, -2:-1], scored=input_ids[0, -1:])]
        plan = plan_forward(sequences, layout=self._layout, pad_token_id=self._tokenizer.pad_token_id)
        model_inputs = {"input_ids": plan.input_ids, "labels": plan.labels}
        if plan.attention_mask is not None:
            model_inputs["attention_mask"] = plan.attention_mask
        if plan.position_ids is not None:
            model_inputs["position_ids"] = plan.position_ids
        if compute_aux_loss:
            model_inputs["output_router_logits"] = True
        with self.accelerator.autocast():
            outputs = model(**model_inputs, fused_lm_head=True)
        logps = split_scored(outputs.log_probs, plan)
        entropies = split_scored(outputs.entropy, plan) if compute_entropy else []
        anchor = outputs.log_probs.sum() * 0
        if placeholder:
            logps, entropies = [], []
        return logps, entropies, outputs.aux_loss if compute_aux_loss else None, anchor

    def scored_demonstrations(
        self, model, inputs: dict, request: ForwardRequest, demo_rows: torch.Tensor, fused: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, torch.Tensor | None]:
        """
        The demonstrations' log-probs and entropies (`None` from their own forward), and a zero of the graph to add
        to the loss when their forward scored nothing (else `None`). `fused`: they were scored in the RL rows' forward
        (`request`); otherwise they get their own forward at temperature 1.
        """
        if fused:
            return request.extra_logps, request.extra_entropies, None
        # DDP broadcasts buffers and ZeRO-3 gathers parameters on every forward, so all processes must run this one
        # too: a micro-batch without demonstrations runs it on a fully masked row (zero loss).
        placeholder = demo_rows.numel() == 0
        rows = torch.zeros(1, dtype=torch.long, device=demo_rows.device) if placeholder else demo_rows
        logps = self._demonstration_logps(model, select_rows(inputs, rows, inputs["prompt_ids"].size(0)))
        if placeholder:  # its one row has no demonstration token: keep the forward in the graph, score none
            return [], None, sum(lp.sum() for lp in logps) * 0
        return logps, None, None

    def _demonstration_sequences(self, inputs: dict, rows: torch.Tensor) -> list[Sequence]:
        """The demonstration rows of a micro-batch as sequences (prompt, demonstration) to score in the forward."""
        sequences = []
        for row in rows.tolist():
            num_tokens = int(inputs["demonstration_mask"][row].sum())
            sequences.append(
                Sequence(
                    context=inputs["prompt_ids"][row][inputs["prompt_mask"][row].bool()],
                    scored=inputs["demonstration_ids"][row, :num_tokens],
                )
            )
        return sequences

    def _demonstration_logps(self, model, batch: dict) -> list[torch.Tensor]:
        """Per row of `batch`, the log-probs (at temperature 1) of its demonstration tokens, from their own forward."""
        prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
        demo_ids, demo_mask = batch["demonstration_ids"], batch["demonstration_mask"]
        # Drop the padding columns these rows share, so a short demonstration batch does not pay for long rollouts.
        first_prompt_column = int(prompt_mask.any(dim=0).int().argmax())
        demo_width = max(int(demo_mask.sum(dim=1).max()), 1)
        prompt_ids, prompt_mask = prompt_ids[:, first_prompt_column:], prompt_mask[:, first_prompt_column:]
        demo_ids, demo_mask = demo_ids[:, :demo_width], demo_mask[:, :demo_width]

        input_ids = torch.cat([prompt_ids, demo_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, demo_mask], dim=1)
        # Only used at a sampling temperature other than 1, where TRL's fused head (which divides by it) cannot score
        # the demonstrations: SFT is the NLL of the model's own distribution.
        with self.accelerator.autocast():
            logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=demo_width + 1).logits
        logps = selective_log_softmax(logits[:, :-1].float(), input_ids[:, -demo_width:])
        return [lp[: int(m.sum())] for lp, m in zip(logps, demo_mask)]
