"""Issue 6: a training forward covers exactly the sequences that carry loss, and leaving the rest out is exact."""

import pytest
import torch
from hpt_testing import make_config, make_dataset, parameters

from hpt_trl import HPTConfig, HPTTrainer
from hpt_trl.builtin_task.tiny_model import build_char_tokenizer, build_tiny_qwen2
from hpt_trl.gating import DEMONSTRATION_ROW
from hpt_trl.packing import plan_forward, sequences_from_batch, split_scored


def odd_wrong_even_by_length(completions, pid, **kwargs):
    """Odd prompts: all wrong (gated at gamma=0). Even prompts: correct by length parity, often a zero-advantage group."""
    texts = [c[0]["content"] for c in completions]
    return [0.0 if p % 2 else float(len(t) % 2) for p, t in zip(pid, texts, strict=True)]


def test_packed_and_padded_layouts_score_like_the_rectangle():
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = build_tiny_qwen2(build_char_tokenizer(), hidden_size=32).eval()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    # TRL's layout: prompts left-padded to 5, completions right-padded to 4.
    prompts = [torch.tensor([11, 12, 13]), torch.tensor([21, 22, 23, 24, 25]), torch.tensor([31]), torch.tensor([81])]
    completions = [
        torch.tensor([41, 42, 43, 44]),
        torch.tensor([51, 52]),
        torch.tensor([61, 62, 63]),
        torch.tensor([82, 83]),
    ]
    input_ids = torch.zeros(4, 9, dtype=torch.long)
    attention_mask = torch.zeros(4, 9, dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        input_ids[row, 5 - len(p) : 5], attention_mask[row, 5 - len(p) : 5] = p, 1
        input_ids[row, 5 : 5 + len(c)], attention_mask[row, 5 : 5 + len(c)] = c, 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100
    with torch.no_grad():
        rectangle = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)

    sequences = sequences_from_batch(input_ids, attention_mask, logits_to_keep=4, rows=[2, 0])
    assert [s.context.tolist() for s in sequences] == [[31], [11, 12, 13]]
    assert [s.scored.tolist() for s in sequences] == [[61, 62, 63], [41, 42, 43, 44]]
    rows = [2, 0, 1, 3]  # lengths 4, 7, 7 and 3: bins of width 7 hold them in 3 rows, the last two sharing one
    sequences = sequences_from_batch(input_ids, attention_mask, logits_to_keep=4, rows=rows)
    for layout, shape in (("packed", (1, 21)), ("bins", (3, 7)), ("padded", (4, 7))):
        plan = plan_forward(sequences, layout=layout, pad_token_id=0)
        assert tuple(plan.input_ids.shape) == shape
        with torch.no_grad():
            out = model(
                input_ids=plan.input_ids,
                attention_mask=plan.attention_mask,
                position_ids=plan.position_ids,
                labels=plan.labels,
                fused_lm_head=True,
            )
        for row, logps in zip(rows, split_scored(out.log_probs, plan)):
            torch.testing.assert_close(logps, rectangle.log_probs[row, 4 : 4 + len(logps)], rtol=1e-5, atol=1e-5)
        for row, entropy in zip(rows, split_scored(out.entropy, plan)):
            torch.testing.assert_close(entropy, rectangle.entropy[row, 4 : 4 + len(entropy)], rtol=1e-5, atol=1e-5)

    # A hole in a completion mask is not TRL's layout: the caller must keep the rectangle.
    attention_mask[0, 6] = 0
    assert sequences_from_batch(input_ids, attention_mask, logits_to_keep=4, rows=[0]) is None


def _needed_positions(inputs, skip_zero_advantage: bool) -> int:
    """Real tokens of the sequences that carry loss: RL rows with loss tokens (and signal), and demonstrations."""
    loss_rows = inputs["completion_mask"].sum(1) > 0
    if skip_zero_advantage:
        loss_rows &= inputs["advantages"] != 0
    needed = int((inputs["prompt_mask"].sum(1) + inputs["completion_mask"].sum(1))[loss_rows].sum())
    demos = inputs["hpt_row_kind"] == DEMONSTRATION_ROW
    return needed + int((inputs["prompt_mask"].sum(1) + inputs["demonstration_mask"].sum(1))[demos].sum())


@pytest.mark.parametrize("padding_free", [True, False])
def test_training_forwards_cover_only_sequences_with_loss(tiny_model_dir, tmp_path, padding_free):
    args = make_config(tmp_path, gamma=0, gradient_accumulation_steps=2, max_steps=3, padding_free=padding_free)
    trainer = HPTTrainer(tiny_model_dir, odd_wrong_even_by_length, args=args, train_dataset=make_dataset())
    assert trainer.skip_zero_advantage_rows  # beta=0, no entropy bonus, dr_grpo: exact, so on by default

    forwarded, expected = [], []

    def count(module, args, kwargs):
        if torch.is_grad_enabled():
            forwarded.append((kwargs["input_ids"].numel(), kwargs["input_ids"].size(0), kwargs["input_ids"].size(1)))

    original = trainer._compute_loss

    def compute_loss(model, inputs):
        expected.append((_needed_positions(inputs, True), inputs))
        return original(model, inputs)

    trainer._compute_loss = compute_loss
    trainer.model.register_forward_pre_hook(count, with_kwargs=True)
    trainer.train()

    assert len(forwarded) == len(expected) == 6  # one forward per micro-batch: demonstrations share the RL forward
    kinds_seen = set()
    for (positions, rows, width), (needed, inputs) in zip(forwarded, expected):
        kinds_seen |= set(inputs["hpt_row_kind"].tolist())
        if needed == 0:
            assert positions == 2  # nothing carries loss: a two-token placeholder keeps the processes in step
        else:
            rl = (inputs["completion_mask"].sum(1) > 0).logical_and(inputs["advantages"] != 0)
            demos = inputs["hpt_row_kind"] == DEMONSTRATION_ROW
            lengths = (inputs["prompt_mask"].sum(1) + inputs["completion_mask"].sum(1))[rl].tolist()
            lengths += (inputs["prompt_mask"].sum(1) + inputs["demonstration_mask"].sum(1))[demos].tolist()
            # Rows as wide as the longest sequence; sdpa's padding-free layout puts several sequences to a row.
            assert positions == rows * width and width == max(lengths)
            assert rows <= len(lengths) if padding_free else rows == len(lengths)
    assert kinds_seen == {0, 1, 2}, "the run must mix RL, demonstration and dropped rows"


def test_leaving_rows_out_does_not_change_the_update(tiny_model_dir, tmp_path):
    """Packed, zero-advantage rows skipped, gated rollouts not forwarded: the same step as TRL's full rectangle."""
    results = []
    for name, options in (
        ("full", dict(padding_free=False, skip_zero_advantage_rows=False)),
        ("lean", dict(padding_free=True, skip_zero_advantage_rows=True)),
    ):
        args = make_config(
            tmp_path / name, gamma=0, gradient_accumulation_steps=2, max_completion_length=24, **options
        )
        trainer = HPTTrainer(tiny_model_dir, odd_wrong_even_by_length, args=args, train_dataset=make_dataset())
        before = parameters(trainer.model)
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        results.append((before, parameters(trainer.model), losses))
    (before, full, full_losses), (_, lean, lean_losses) = results
    assert any(not torch.equal(before[n], full[n]) for n in full)
    for name in full:
        torch.testing.assert_close(lean[name], full[name], rtol=1e-4, atol=1e-6, msg=name)
    assert lean_losses == pytest.approx(full_losses, rel=1e-4, abs=1e-6)


def test_skipping_zero_advantage_rows_is_refused_where_it_changes_the_gradient(tmp_path):
    with pytest.raises(ValueError, match="skip_zero_advantage_rows=True would change the gradient.*beta=0.04"):
        make_config(tmp_path, skip_zero_advantage_rows=True, beta=0.04)
    with pytest.raises(ValueError, match="entropy bonus"):
        make_config(tmp_path, skip_zero_advantage_rows=True, entropy_coef=0.001)
    bnpo = HPTConfig(str(tmp_path), loss_type="bnpo", use_cpu=True, bf16=False)
    assert bnpo.zero_advantage_gradient_terms() == [
        "loss_type='bnpo' (it averages over every token of the micro-batch)"
    ]
    assert HPTConfig(str(tmp_path), use_cpu=True, bf16=False).zero_advantage_gradient_terms() == []
