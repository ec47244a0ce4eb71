"""Reading, validating and tokenizing the expert demonstrations that HPT trains gated prompts on."""

from collections.abc import Iterable
from typing import Any

from transformers import PreTrainedTokenizerBase


# The column HPTTrainer reads demonstrations from by default (HPTConfig's `demonstration_column`), which
# `hpt_trl.data.load_hpt_dataset` writes whatever the source column is called.
DEMONSTRATION_COLUMN = "demonstration"


def demonstration_text(value: Any, column: str, row: int | None = None) -> str:
    """
    Return the text of one demonstration, or raise a `ValueError` that names the column, the row and the fix.

    Accepted forms: a string (standard and conversational datasets), or a list holding one assistant message
    (`[{"role": "assistant", "content": "..."}]`, the `target` column of the authors' dataset) or that message alone.
    """
    where = f"column '{column}'" + (f", row {row}" if row is not None else "")
    message = value
    if isinstance(message, list):
        if len(message) != 1:
            raise ValueError(
                f"The demonstration in {where} is a list of {len(message)} messages; HPT expects a string or a list "
                'with exactly one assistant message, e.g. [{"role": "assistant", "content": "..."}].'
            )
        message = message[0]
    if isinstance(message, dict):
        if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
            raise ValueError(
                f"The demonstration in {where} is a message with role {message.get('role')!r}; HPT expects an "
                'assistant message with string content, e.g. {"role": "assistant", "content": "..."}.'
            )
        message = message["content"]
    if not isinstance(message, str):
        raise ValueError(
            f"The demonstration in {where} is a {type(value).__name__}; HPT expects a string or a list with one "
            "assistant message. Map your dataset so that this column holds the expert solution."
        )
    if not message.strip():
        raise ValueError(
            f"The demonstration in {where} is empty. Every prompt needs an expert solution: drop rows without one "
            "(e.g. `dataset.filter(...)`) or set gamma=-1 to train without SFT."
        )
    return message


def validate_demonstration_column(dataset, column: str, batch_size: int = 1024) -> None:
    """
    Check, before any compute, that `dataset` has `column` and that every row holds a usable demonstration.

    Map-style datasets are read column-only in batches, so a large corpus of long demonstrations is not loaded into
    memory at once. Iterable datasets cannot be scanned up front; their rows are checked batch by batch in training.
    """
    column_names = getattr(dataset, "column_names", None)
    if column_names is None:
        return
    if column not in column_names:
        raise ValueError(
            f"The training dataset has no demonstration column '{column}' (columns: {column_names}). HPT needs each "
            "prompt's expert solution: add that column, point `demonstration_column` at the column that holds it, "
            "or set gamma=-1 to train without SFT."
        )
    if not hasattr(dataset, "select_columns") or not hasattr(dataset, "iter"):
        return
    row = 0
    for batch in dataset.select_columns([column]).iter(batch_size=batch_size):
        for value in batch[column]:
            demonstration_text(value, column, row)
            row += 1


def tokenize_demonstrations(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    column: str = DEMONSTRATION_COLUMN,
) -> tuple[list[list[int]], list[bool]]:
    """
    Tokenize demonstrations as completions: the text's tokens (no special tokens added), then EOS.

    A demonstration longer than `max_length` tokens (EOS included) is cut to `max_length`; the cut drops the EOS, so
    the model is not taught to stop in the middle of a solution.

    Returns:
        `tuple[list[list[int]], list[bool]]`: the token ids of each demonstration and whether it was truncated.
    """
    texts = list(texts)
    unique_texts = list(dict.fromkeys(texts))  # a prompt's rows repeat its demonstration num_generations times
    encoded = tokenizer(text=unique_texts, add_special_tokens=False)["input_ids"]
    by_text = {}
    for text, ids in zip(unique_texts, encoded, strict=True):
        if not ids:
            raise ValueError(
                f"A demonstration in column '{column}' tokenizes to no tokens ({text[:80]!r}). Check that the "
                "tokenizer covers its characters, or drop that row."
            )
        ids = [*ids, tokenizer.eos_token_id]
        truncated = max_length is not None and len(ids) > max_length
        by_text[text] = (ids[:max_length] if truncated else ids, truncated)
    token_ids = [by_text[text][0] for text in texts]
    truncated = [by_text[text][1] for text in texts]
    return token_ids, truncated


def tokenize_batch_demonstrations(
    inputs: list[dict[str, Any]], column: str, tokenizer: PreTrainedTokenizerBase, max_length: int | None
) -> tuple[list[str], list[list[int]], list[bool]]:
    """The demonstrations of a generation batch's rows: their texts, token ids (EOS appended) and truncation flags."""
    texts = []
    for row, example in enumerate(inputs):
        if column not in example:
            raise ValueError(
                f"A training example has no demonstration column '{column}' (keys: {list(example)}). Add it, "
                "point `demonstration_column` at the column with the expert solutions, or set gamma=-1."
            )
        texts.append(demonstration_text(example[column], column, row))
    return texts, *tokenize_demonstrations(texts, tokenizer, max_length, column=column)
