"""Prompt templates, identical to the ones used in training so a checkpoint is evaluated on the prompts it learned."""

from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


TEMPLATES = ("chat", "llama", "none")

# The plain-text prompt the authors use for Llama-3.1-8B (a base model with no chat template).
LLAMA_TEMPLATE = "Question:\n{prompt}\nAnswer:\nLet's think step by step."


def render_prompt(
    problem_text: str,
    tokenizer: "PreTrainedTokenizerBase",
    template: str = "chat",
    instruction: str | None = None,
    system_prompt: str | None = None,
) -> tuple[str, list[int]]:
    """
    Render a problem into the model's prompt and tokenize it the way TRL does in training.

    `chat` applies the tokenizer's chat template to one user turn (after an optional system turn) with the generation
    prompt; its special tokens come from the template, so none are added on top. `llama` and `none` are plain text,
    tokenized with the tokenizer's usual special tokens (a BOS where the tokenizer adds one), as TRL does for
    non-conversational prompts.

    The authors' evaluation adds no instruction and no system prompt (they drop the dataset's system prompt in training
    and in evaluation); Qwen2.5-Math's own chat template supplies a default system turn asking for a `\\boxed{}`
    answer. `instruction` and `system_prompt` exist for other models.

    Args:
        problem_text (`str`):
            The problem.
        tokenizer (`PreTrainedTokenizerBase`):
            The model's tokenizer.
        template (`str`, *optional*, defaults to `"chat"`):
            `"chat"`, `"llama"` or `"none"`.
        instruction (`str`, *optional*):
            Text appended to the problem after a blank line, e.g. "Please reason step by step, and put your final
            answer within \\boxed{}.".
        system_prompt (`str`, *optional*):
            A system turn (chat template only).

    Returns:
        `tuple[str, list[int]]`: The prompt text and its token ids.
    """
    if template not in TEMPLATES:
        raise ValueError(f"Unknown --template {template!r}; choose one of {', '.join(TEMPLATES)}.")
    content = problem_text if not instruction else f"{problem_text}\n\n{instruction}"
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "--template chat needs a tokenizer with a chat template, and this one has none (a base model?). Use "
                "--template llama or --template none."
            )
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": content}
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
        return text, list(ids["input_ids"])
    if system_prompt:
        raise ValueError(
            f"--system_prompt needs --template chat (got --template {template}); put it in --instruction."
        )
    text = LLAMA_TEMPLATE.format(prompt=content) if template == "llama" else content
    return text, list(tokenizer(text)["input_ids"])
