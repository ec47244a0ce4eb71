"""
The prompt templates, defined once for training (`hpt_trl.data`) and evaluation (`hpt_trl.evaluation`).

A checkpoint must be evaluated on the prompts it was trained on, so both sides build the prompt here:
[`build_prompt`] turns a problem into chat messages (`"chat"`) or a plain string (`"llama"`, `"none"`), and
[`render_prompt`] renders and tokenizes that prompt exactly as TRL's `GRPOTrainer` does during training.

The templates are the authors' (GitHub TsinghuaC3I/Unify-Post-Training, commit ae332f5):

- `"chat"` (Qwen2.5-Math): the tokenizer's chat template over one user turn holding the problem as it is. Their
  `data/prepare_train.py` drops the dataset's system prompt, so Qwen2.5-Math's own template supplies its default system
  turn (which asks for a `\\boxed{}` answer).
- `"llama"` (Llama-3.1-8B, a base model): `exp_scripts/train_llama.sh` sets `data.zero_temp` to [`LLAMA_TEMPLATE`]
  and `data.suffix_prompt` to [`LLAMA_SUFFIX`]; verl's dataset appends the suffix to the user message, then formats
  the template with it (`verl/utils/dataset/rl_dataset.py`, `verl/mix_src/rl_dataset_with_target.py`). Neither step
  strips whitespace, and neither does this module.
- `"none"`: the problem text as it is.

This module imports neither TRL nor transformers, so the evaluation package stays light.
"""

from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


TEMPLATES = ("chat", "llama", "none")

# `data.zero_temp` of the authors' train_llama.sh: the plain-text prompt of a base model with no chat template.
LLAMA_TEMPLATE = "Question:\n{prompt}\nAnswer:\nLet's think step by step."
# `data.suffix_prompt` of train_llama.sh, appended to the problem before it fills `{prompt}`.
LLAMA_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def llama_prompt(problem: str) -> str:
    """
    The authors' Llama-3.1-8B prompt for a problem: [`LLAMA_TEMPLATE`] filled with the problem plus [`LLAMA_SUFFIX`].

    Example: `llama_prompt("What is 1+1?")` is `"Question:\\nWhat is 1+1?\\nPlease reason step by step, and put your
    final answer within \\\\boxed{}.\\nAnswer:\\nLet's think step by step."`.
    """
    return LLAMA_TEMPLATE.format(prompt=problem + LLAMA_SUFFIX)


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"Unknown --template {template!r}; choose one of {', '.join(TEMPLATES)}.")


def build_prompt(
    problem: str,
    template: str = "chat",
    system_prompt: str | None = None,
    instruction: str | None = None,
) -> str | list[dict[str, str]]:
    """
    Build the prompt of one problem, in the form TRL takes it: chat messages for `"chat"`, a string otherwise.

    Args:
        problem (`str`):
            The problem, used as it is (no whitespace is stripped, as in the authors' code).
        template (`str`, *optional*, defaults to `"chat"`):
            `"chat"`, `"llama"` or `"none"` (see the module docstring).
        system_prompt (`str`, *optional*):
            A system turn before the user turn (`"chat"`), or text written before the question, followed by a blank
            line (`"llama"`, `"none"`). The authors use none.
        instruction (`str`, *optional*):
            Text appended to the problem after a blank line (before the Llama suffix). The authors use none.

    Returns:
        `str` or `list[dict[str, str]]`: The prompt.
    """
    _check_template(template)
    content = problem if not instruction else f"{problem}\n\n{instruction}"
    if template == "chat":
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return system + [{"role": "user", "content": content}]
    text = llama_prompt(content) if template == "llama" else content
    return f"{system_prompt}\n\n{text}" if system_prompt else text


def tokenize_prompt(prompt: str | list[dict[str, Any]], tokenizer: "PreTrainedTokenizerBase") -> tuple[str, list[int]]:
    """
    Render and tokenize a prompt the way TRL's `GRPOTrainer` does in training (`_tokenize_prompts`, TRL 1.16).

    Chat messages go through `apply_chat_template(..., add_generation_prompt=True, tokenize=True)`, whose special
    tokens come from the template alone. A string is tokenized with `tokenizer(text)`, so with the tokenizer's usual
    special tokens (a BOS for Llama). (The authors' verl tokenizes with `add_special_tokens=False`: their Llama prompts
    had no BOS. TRL's training adds it, and so does this function, so that evaluation matches our training.)

    Args:
        prompt (`str` or `list[dict]`):
            The output of [`build_prompt`].
        tokenizer (`PreTrainedTokenizerBase`):
            The model's tokenizer.

    Returns:
        `tuple[str, list[int]]`: The prompt text and its token ids.
    """
    if isinstance(prompt, str):
        return prompt, list(tokenizer(prompt)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "--template chat needs a tokenizer with a chat template, and this one has none (a base model?). Use "
            "--template llama or --template none."
        )
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
    return text, list(ids["input_ids"])


def render_prompt(
    problem_text: str,
    tokenizer: "PreTrainedTokenizerBase",
    template: str = "chat",
    instruction: str | None = None,
    system_prompt: str | None = None,
) -> tuple[str, list[int]]:
    """
    Render a problem into the model's prompt and tokenize it the way TRL does in training.

    The prompt is [`build_prompt`]'s, the one the training loader (`hpt_trl.data.load_hpt_dataset`) writes into the
    `prompt` column, and the tokens are [`tokenize_prompt`]'s, the ones TRL feeds the model: a problem trained on and
    evaluated with the same template gets the same prompt token ids.

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
    _check_template(template)
    if system_prompt and template != "chat":
        raise ValueError(
            f"--system_prompt needs --template chat (got --template {template}); put it in --instruction."
        )
    return tokenize_prompt(build_prompt(problem_text, template, system_prompt, instruction), tokenizer)
