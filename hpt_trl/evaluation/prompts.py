"""
Prompt templates of the evaluation: the very ones of training, defined once in `hpt_trl.prompts` (this module
re-exports them), so a checkpoint is evaluated on the prompts it learned.
"""

from hpt_trl.prompts import LLAMA_SUFFIX, LLAMA_TEMPLATE, TEMPLATES, build_prompt, llama_prompt, render_prompt


__all__ = ["LLAMA_SUFFIX", "LLAMA_TEMPLATE", "TEMPLATES", "build_prompt", "llama_prompt", "render_prompt"]
