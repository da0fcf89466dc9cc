"""Skip a batch whose loss is NaN or infinite, and count it.

fairseq's trainer has no such guard in fp32: a non-finite loss gives non-finite gradients and the
update raises ``FloatingPointError: gradients are Nan/Inf`` (after writing ``crash.pt``); only its
fp16/AMP paths skip an overflowing batch.  The plugin's criterions (``bso``, ``word_kd``) check their
loss instead: a non-finite one is replaced by ``0 · Σ params`` (a zero loss whose gradient is exactly
zero for every parameter, so distributed gradient reduction sees every parameter as usual), the
batch's ``sample_size`` becomes 0 (the other batches of the update keep their normalization), a warning
is logged, and the ``nonfinite_skipped`` metric counts it.  An update in which *every* batch was
skipped still calls the optimizer with zero gradients: plain SGD does not move, Adam applies its
momentum (fairseq gives a criterion no way to cancel the step).  Validation is not guarded: a
non-finite validation loss is reported as it is.
"""

import logging

import torch
from fairseq.logging import metrics

logger = logging.getLogger(__name__)

KEY = "nonfinite_skipped"
WARNINGS = 5  # then the metric alone counts them
_warned = 0


def guard(loss: torch.Tensor, sample_size, logging_output: dict, model, sample):
    """``(loss, sample_size, logging_output)``, or their skipped-batch replacement if ``loss`` is not finite."""
    global _warned
    if not model.training or bool(torch.isfinite(loss).all()):
        return loss, sample_size, logging_output  # validation reports the non-finite loss as it is
    if _warned < WARNINGS:
        _warned += 1
        ids = sample.get("id")
        logger.warning(f"non-finite training loss ({loss.item()}) on a batch of {sample['target'].size(0)} sentences "
                       f"(ids {ids[:8].tolist() if ids is not None else '?'}): batch skipped"
                       + ("; further ones are only counted (nonfinite_skipped)" if _warned == WARNINGS else ""))
    # summed in at least float32: a half model's sum could overflow and log a NaN loss
    zero = sum(p.sum(dtype=torch.promote_types(p.dtype, torch.float32)) for p in model.parameters() if p.requires_grad) * 0.0
    skipped = {key: 0 for key in logging_output}
    skipped.update(loss=zero.detach(), **{KEY: 1})
    return zero, 0, skipped


def log_skipped(logging_outputs) -> None:
    """The number of skipped batches, in the interval or epoch lines that had any."""
    skipped = sum(log.get(KEY, 0) for log in logging_outputs)
    if skipped:
        metrics.log_scalar_sum(KEY, skipped)
