"""
Generation backends: vLLM for real evaluations and transformers for CPU runs, small checks and in-training callbacks.

Both take prompts as token ids (rendered by `hpt_trl.prompts.render_prompt`), so the two backends see exactly the same
input, and both return, per prompt, `n` `Generation`s with the decoded text, the token count and whether the token
limit cut the response off.
"""

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol


if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


BACKENDS = ("vllm", "transformers")
DTYPES = ("auto", "bfloat16", "float16", "float32")

VLLM_INSTALL_HINT = (
    "The vLLM backend needs the `vllm` package, which is not installed. Install it with `pip install 'hpt-trl[vllm]'` "
    "(Linux with a CUDA GPU), or run with `--backend transformers` (slow, for small checks)."
)


@dataclass(frozen=True)
class SamplingConfig:
    """
    Sampling settings shared by both backends. The defaults are the authors' in-training validation (temperature 0.6,
    top-p 0.95, 8 samples, 8192 tokens); `hpt-eval` takes its values from the evaluation protocol (`protocols.py`).

    Args:
        n (`int`, *optional*, defaults to `8`):
            Samples per problem.
        temperature (`float`, *optional*, defaults to `0.6`):
            Sampling temperature; `0` means greedy decoding (the one greedy response is repeated `n` times).
        top_p (`float`, *optional*, defaults to `0.95`):
            Nucleus sampling mass, in `(0, 1]`.
        top_k (`int`, *optional*, defaults to `-1`):
            Top-k filtering; `-1` (or `0`) disables it.
        max_new_tokens (`int`, *optional*, defaults to `8192`):
            Response token limit; a response that reaches it without EOS counts as truncated.
        seed (`int`, *optional*, defaults to `0`):
            Base random seed.
    """

    n: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = -1
    max_new_tokens: int = 8192
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"`n` (samples per problem) must be an integer >= 1, got {self.n!r}.")
        if (
            not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature))
            or self.temperature < 0
        ):
            raise ValueError(f"`temperature` must be a finite number >= 0 (0 = greedy), got {self.temperature!r}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p!r}.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"`top_k` must be an integer >= -1 (-1 or 0 disables it), got {self.top_k!r}.")
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise ValueError(f"`max_new_tokens` must be an integer >= 1, got {self.max_new_tokens!r}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def distinct_samples(self) -> int:
        """How many samples to actually draw: greedy decoding gives the same response every time, so one."""
        return 1 if self.greedy else self.n


@dataclass
class Generation:
    """One sampled response: its text (special tokens removed), token count (EOS included) and truncation flag."""

    text: str
    num_tokens: int
    truncated: bool


class GenerationBackend(Protocol):
    """What the harness needs from a backend."""

    name: str
    tokenizer: "PreTrainedTokenizerBase"

    def generate(
        self, prompt_ids: list[list[int]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[list[Generation]]: ...


def vllm_sampling_kwargs(sampling: SamplingConfig, seed: int | None = None) -> dict[str, Any]:
    """
    Map the sampling settings onto `vllm.SamplingParams` keyword arguments.

    Greedy decoding (`temperature == 0`) draws one sample (the backend repeats it) with top-p/top-k off. A disabled
    top-k is left out rather than passed as `-1` or `0`, whose meaning changed between vLLM versions.

    Args:
        sampling (`SamplingConfig`):
            The settings.
        seed (`int`, *optional*):
            Per-request seed; vLLM then draws the same samples for a problem whatever else is in the batch.

    Returns:
        `dict[str, Any]`: Keyword arguments for `SamplingParams`.
    """
    kwargs: dict[str, Any] = {
        "n": sampling.distinct_samples,
        "temperature": float(sampling.temperature),
        "top_p": 1.0 if sampling.greedy else float(sampling.top_p),
        "max_tokens": sampling.max_new_tokens,
    }
    if sampling.top_k > 0 and not sampling.greedy:
        kwargs["top_k"] = sampling.top_k
    if seed is not None:
        kwargs["seed"] = seed
    return kwargs


def transformers_generate_kwargs(sampling: SamplingConfig) -> dict[str, Any]:
    """
    Map the sampling settings onto `transformers` `generate` keyword arguments, matching `vllm_sampling_kwargs`.

    Every sampling knob is set explicitly so that a checkpoint's `generation_config.json` (Qwen's ship top-k 20 and a
    repetition penalty) cannot change the distribution: the two backends then sample from the same one.

    Args:
        sampling (`SamplingConfig`):
            The settings.

    Returns:
        `dict[str, Any]`: Keyword arguments for `model.generate`.
    """
    kwargs: dict[str, Any] = {
        "max_new_tokens": sampling.max_new_tokens,
        "num_return_sequences": sampling.distinct_samples,
        "repetition_penalty": 1.0,
    }
    if sampling.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(
            do_sample=True,
            temperature=float(sampling.temperature),
            top_p=float(sampling.top_p),
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
        )
    return kwargs


def _repeat_to_n(generations: list[Generation], n: int) -> list[Generation]:
    if len(generations) == n:
        return generations
    return [Generation(**asdict(generations[i % len(generations)])) for i in range(n)]


def import_vllm():
    """Import vLLM, or fail with the command that installs it."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(VLLM_INSTALL_HINT) from error
    return vllm


class VLLMBackend:
    """
    Generation with vLLM (`pip install 'hpt-trl[vllm]'`).

    Args:
        model (`str`):
            Local path or Hub id of the checkpoint.
        tensor_parallel_size (`int`, *optional*, defaults to `1`):
            GPUs to shard the model over.
        gpu_memory_utilization (`float`, *optional*, defaults to `0.9`):
            Share of GPU memory vLLM may take.
        max_model_len (`int`, *optional*):
            Context length (prompt + response); defaults to the model's.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weights dtype.
        seed (`int`, *optional*, defaults to `0`):
            Engine seed.
        **llm_kwargs:
            Further `vllm.LLM` arguments.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
        **llm_kwargs,
    ):
        vllm = import_vllm()
        self._sampling_params_cls = vllm.SamplingParams
        if max_model_len is not None:
            llm_kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            seed=seed,
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self, prompt_ids: list[list[int]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[list[Generation]]:
        params = [self._sampling_params_cls(**vllm_sampling_kwargs(sampling, seed=seed)) for seed in seeds]
        # Token ids, not text: vLLM would otherwise add a BOS in front of a chat template that already has one.
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for output in outputs:
            generations = [
                Generation(text=o.text, num_tokens=len(o.token_ids), truncated=o.finish_reason == "length")
                for o in output.outputs
            ]
            results.append(_repeat_to_n(generations, sampling.n))
        return results


def _resolve_torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"Unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


class TransformersBackend:
    """
    Batched generation with `transformers` (left padding, `num_return_sequences`), for CPU runs and small checks.

    Args:
        model (`str` or `PreTrainedModel`):
            Local path or Hub id, or an already loaded model (the training callback passes the model being trained).
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Its tokenizer; loaded from `model` when it is a path.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weights dtype when loading.
        device (`str`, *optional*):
            Where to load the model; defaults to CUDA when available, else CPU. Ignored for a loaded model.
    """

    name = "transformers"

    def __init__(
        self,
        model: "str | PreTrainedModel",
        tokenizer: "PreTrainedTokenizerBase | None" = None,
        dtype: str = "auto",
        device: str | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, str):
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model, dtype=_resolve_torch_dtype(dtype)).to(device)
        elif tokenizer is None:
            raise ValueError("TransformersBackend needs `tokenizer` when `model` is a loaded model.")
        self.model = model
        self.tokenizer = tokenizer

        eos_ids = set()
        for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
            if value is not None:
                eos_ids.update(value if isinstance(value, (list, tuple)) else [value])
        if not eos_ids:
            raise ValueError("The tokenizer and the generation config define no EOS token; cannot tell when to stop.")
        self.eos_token_ids = sorted(eos_ids)
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]

    def generate(
        self, prompt_ids: list[list[int]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[list[Generation]]:
        import torch

        from ..rng import private_rng

        device = self.model.device
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompt_ids):
            # Left padding: every prompt ends at the same column, where generation starts.
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1

        kwargs = transformers_generate_kwargs(sampling)
        was_training = self.model.training
        self.model.eval()
        # A private RNG stream, so evaluating inside a training run does not move the trainer's random state.
        with private_rng(seeds[0] if seeds else sampling.seed), torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                eos_token_id=self.eos_token_ids,
                pad_token_id=self.pad_token_id,
                **kwargs,
            )
        if was_training:
            self.model.train()

        completions = output[:, width:].cpu()
        eos = torch.tensor(self.eos_token_ids)
        per_prompt = kwargs["num_return_sequences"]
        results = []
        for row in range(len(prompt_ids)):
            generations = []
            for sample in range(per_prompt):
                tokens = completions[row * per_prompt + sample]
                is_eos = torch.isin(tokens, eos)
                if bool(is_eos.any()):
                    end = int(is_eos.nonzero()[0, 0])
                    text_tokens, num_tokens, truncated = tokens[:end], end + 1, False
                else:
                    text_tokens, num_tokens, truncated = tokens, len(tokens), True
                text = self.tokenizer.decode(text_tokens.tolist(), skip_special_tokens=True)
                generations.append(Generation(text=text, num_tokens=num_tokens, truncated=truncated))
            results.append(_repeat_to_n(generations, sampling.n))
        return results


def build_backend(
    backend: str,
    model: str,
    dtype: str = "auto",
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    seed: int = 0,
) -> GenerationBackend:
    """
    Load a model into the named backend.

    Args:
        backend (`str`):
            `"vllm"` or `"transformers"`.
        model (`str`):
            Local path or Hub id.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weights dtype.
        tensor_parallel_size (`int`, *optional*, defaults to `1`):
            vLLM only.
        gpu_memory_utilization (`float`, *optional*, defaults to `0.9`):
            vLLM only.
        max_model_len (`int`, *optional*):
            vLLM only.
        seed (`int`, *optional*, defaults to `0`):
            vLLM engine seed.

    Returns:
        `GenerationBackend`: The loaded backend.
    """
    if backend == "vllm":
        return VLLMBackend(
            model,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
            seed=seed,
        )
    if backend == "transformers":
        return TransformersBackend(model, dtype=dtype)
    raise ValueError(f"Unknown --backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
