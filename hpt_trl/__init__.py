"""hpt-trl: Hybrid Post-Training (arXiv 2509.04419) on Hugging Face TRL."""

from importlib import import_module
from typing import TYPE_CHECKING


__version__ = "0.1.0"

# Importing TRL takes seconds; load the trainer only when it is asked for, so `hpt_trl.rewards` and the evaluation
# harness stay light.
_LAZY = {
    "HPTConfig": "hpt_trl.hpt_config",
    "HPTTrainer": "hpt_trl.hpt_trainer",
}

__all__ = ["HPTConfig", "HPTTrainer"]

if TYPE_CHECKING:
    from .hpt_config import HPTConfig
    from .hpt_trainer import HPTTrainer


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpt_trl' has no attribute {name!r}")
