"""The authors' Qwen update skip (`MAX_GRAD_NORM` in their train.sh): no update when the gradient norm is too large."""

from accelerate.logging import get_logger


logger = get_logger(__name__)


def skip_update_above(model, grad_norm: float, threshold: float, step: int) -> bool:
    """
    Drop the gradients when `grad_norm` (before clipping) exceeds `threshold` or is not finite; returns whether it did.
    An optimizer skips parameters without a gradient: no parameter, moment or step-count change.
    """
    skip = not grad_norm <= threshold  # a non-finite norm is skipped too
    if skip:
        for parameter in model.parameters():
            parameter.grad = None
        logger.warning(
            f"Skipped the update of step {step}: gradient norm {grad_norm:.4g} > grad_norm_skip_threshold={threshold}."
        )
    return skip
