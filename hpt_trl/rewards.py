# Copyright 2025 The hpt-trl authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Reward functions in the TRL format, `f(completions, **kwargs) -> list[float]`, and their registry.

The paper's reward is [`accuracy_reward`]: 1.0 when the content of a completion's last `\\boxed{...}` is
mathematically equivalent to the gold answer (checked by `hpt_trl.verification`: a normalised string comparison, then
time-bounded math-verify), else 0.0. [`format_reward`] scores the box requirement on its own. [`get_reward_funcs`]
looks rewards up by the names that recipes give in `reward_funcs`.
"""

from collections.abc import Callable

from .answer_extraction import extract_boxed_answer
from .verification import verify_batch


_TIMEOUT_METRIC_NAME = "rewards/accuracy_reward/timeouts"


def _completion_text(completion) -> str:
    """Text of a standard (string) or conversational (list of messages) completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        parts = []
        for message in completion:
            if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
                continue
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, (list, tuple)):  # multimodal form: [{"type": "text", "text": ...}, ...]
                parts.extend(
                    c.get("text", "") for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)
                )
        return "\n".join(parts)
    return ""


def accuracy_reward(completions, solution, **kwargs) -> list[float]:
    """
    Binary accuracy reward for math problems, in the TRL reward-function format.

    Each completion scores 1.0 if the content of its last `\\boxed{...}` is mathematically equivalent to its gold
    answer, else 0.0 (see [`~hpt_trl.verification.verify_answer`]). This is the reward of the paper's training runs:
    binary, answer required in a box, checked by normalisation then a SymPy-based verifier. Checks that need
    math-verify run in parallel worker processes (at most `HPT_REWARD_NUM_WORKERS`, default `min(4, number of CPUs)`),
    each with a 5-second limit; a check that runs out of time scores 0.0.

    Args:
        completions (`list[str]` or `list[list[dict]]`):
            Completions, as strings (standard format) or lists of messages such as
            `[{"role": "assistant", "content": ...}]` (conversational format; assistant contents are joined).
        solution (`list[str]`):
            Gold answers, one per completion, boxed or not.
        **kwargs:
            Other columns passed by the trainer. If `log_metric` is a callable (TRL passes one), the number of
            timed-out checks of this call is logged as `"rewards/accuracy_reward/timeouts"`. `timeout_seconds`
            overrides the per-check limit.

    Returns:
        `list[float]`:
            1.0 or 0.0 per completion.
    """
    timeout_seconds = kwargs.get("timeout_seconds")
    if not isinstance(timeout_seconds, (int, float)) or isinstance(timeout_seconds, bool) or timeout_seconds <= 0:
        timeout_seconds = 5.0  # also ignores a dataset column that happens to share the name
    texts = [_completion_text(completion) for completion in completions]
    if len(solution) != len(texts):
        raise ValueError(f"Got {len(texts)} completions but {len(solution)} solutions; expected one per completion.")
    verdicts, timeouts = verify_batch(texts, list(solution), timeout_seconds)
    log_metric = kwargs.get("log_metric")
    if callable(log_metric):
        log_metric(_TIMEOUT_METRIC_NAME, float(timeouts))
    return [1.0 if verdict else 0.0 for verdict in verdicts]


def format_reward(completions, **kwargs) -> list[float]:
    """
    Format reward: 1.0 if the completion states a final answer in a well-formed `\\boxed{...}`, else 0.0.

    The paper's training runs (authors' scripts, `reward_impl_version=6`) use no separate format term: the only format
    requirement is that the accuracy check can find a boxed answer (a completion without one scores 0). The authors'
    code also contains a `<think>...</think>` tag check, but only in reward variants that the HPT scripts do not use,
    so it is not reproduced here. This function exposes the box requirement on its own, e.g. for logging how often
    rollouts give no parseable answer.

    Args:
        completions (`list[str]` or `list[list[dict]]`):
            Completions in standard or conversational format.
        **kwargs:
            Ignored (other columns passed by the trainer).

    Returns:
        `list[float]`:
            1.0 or 0.0 per completion.
    """
    rewards = []
    for completion in completions:
        answer = extract_boxed_answer(_completion_text(completion))
        rewards.append(1.0 if answer else 0.0)
    return rewards


REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
}


def get_reward_funcs(names: list[str] | str) -> list[Callable[..., list[float]]]:
    """
    Return the reward functions registered under `names` in [`REWARD_FUNCS`], in order.

    Args:
        names (`list[str]` or `str`):
            Reward names, e.g. `["accuracy"]` (the paper's only reward) or `["accuracy", "format"]`.

    Returns:
        `list[Callable]`: the reward functions, ready for the trainer's `reward_funcs`.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError(f"reward_funcs is empty; choose at least one of {sorted(REWARD_FUNCS)}.")
    unknown = [name for name in names if name not in REWARD_FUNCS]
    if unknown:
        raise ValueError(f"Unknown reward function(s) {unknown} in reward_funcs; available: {sorted(REWARD_FUNCS)}.")
    return [REWARD_FUNCS[name] for name in names]
