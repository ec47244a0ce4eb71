"""A tiny Qwen2-architecture model and a character-level chat tokenizer, built locally with no download.

The tests and the offline demo need a real causal LM with a real chat template, but neither CI nor a new user's
laptop can reach the Hub. Everything here is deterministic for a seed, so two runs build bit-identical weights.
"""

from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

from ..rng import private_rng


PAD_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"

# ChatML, as Qwen2.5 writes it, so the prompt tokens go through the same `apply_chat_template` path as a real model.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_char_tokenizer() -> Qwen2Tokenizer:
    """
    Build a byte-level character tokenizer: Qwen2's tokenizer class with the 256-symbol byte alphabet as vocabulary
    and no merges, so every byte of the text is one token, plus ChatML special tokens and a chat template.

    Using Qwen2's own class (not a custom pre-tokenizer) matters: `AutoTokenizer` picks the tokenizer class from the
    model's `config.json`, so a saved Qwen2 checkpoint reloads through exactly this class and tokenizes identically.
    """
    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START_TOKEN]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_qwen2(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """Build a randomly initialised Qwen2 causal LM sized for `tokenizer`, deterministic for `seed`."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    # Seed a private generator so building a model does not move the caller's global RNG.
    with private_rng(seed):
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def save_tiny_model(output_dir: str | Path, seed: int = 0, **model_kwargs) -> Path:
    """Build the tokenizer and model and save both with `save_pretrained`, so they load like any Hub checkpoint."""
    output_dir = Path(output_dir)
    tokenizer = build_char_tokenizer()
    model = build_tiny_qwen2(tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
