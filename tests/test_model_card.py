"""HPT's section of the model card (`hpt_trl.model_card`), written after a real training step."""

from hpt_testing import make_config, make_dataset, odd_prompts_wrong

from hpt_trl import HPTTrainer
from hpt_trl.model_card import CARD_METRICS


def test_model_card_names_hpt_the_paper_and_the_runs_final_metrics(tiny_model_dir, tmp_path):
    args = make_config(tmp_path, gamma=0, max_steps=1)
    trainer = HPTTrainer(tiny_model_dir, odd_prompts_wrong, args=args, train_dataset=make_dataset())
    trainer.train()
    trainer.create_model_card(model_name="tiny-hpt")
    card = (tmp_path / "README.md").read_text()
    assert "HPT" in card and "2509.04419" in card
    assert "hpt" in trainer.model.config.to_dict().get("tags", []) or "hpt" in card
    # The section HPT appends: the last logged value of each card metric, and the estimator's parts of this config.
    assert "## Final training metrics" in card and "at step 1, gamma=0, sft_loss_coef=1.0" in card
    logged = trainer.state.log_history[0]
    ratio = logged["hpt/sft_prompt_ratio"]
    assert f"| `hpt/sft_prompt_ratio` | {ratio:.4g} |" in card
    assert all(f"| `{key}` |" in card for key in CARD_METRICS if logged.get(key) is not None)
    assert "## Unified estimator parts" in card
    for part, setting in args.upge_parts.items():
        assert f"| {part} | {setting} |" in card
