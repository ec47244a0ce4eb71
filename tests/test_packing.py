"""`hpt_trl.packing`: packed and padded layouts score every sequence as TRL's rectangle does."""

import torch

from hpt_trl.builtin_task.tiny_model import build_char_tokenizer, build_tiny_qwen2
from hpt_trl.packing import plan_forward, sequences_from_batch, split_scored


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
