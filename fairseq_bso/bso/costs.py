"""Δ, the cost that scales a BSO margin violation (Wiseman and Rush 2016, §4).

* ``zero_one``: Δ = 1 for every violation (word ordering, parsing).
* ``sentence_bleu`` (SB-Δ): Δ = 1 − BLEU(violating segment, gold segment), both
  segments taken since the last reset, BLEU-4 on token ids with sacrebleu's
  ``smooth_method="exp"`` rule and effective order (``sacrebleu.sentence_bleu``'s
  defaults).  Computed for all violations of a batch at once on tensors; the unit
  tests check it against ``sacrebleu.sentence_bleu`` itself.
"""

from typing import Callable, Dict, Optional

import torch
from torch import Tensor

MAX_ORDER = 4


def _ngram_matches(a: Tensor, b: Tensor, a_ok: Tensor, b_ok: Tensor, n: int) -> Tensor:
    """(N, L, L) bool: the n-gram of ``a`` starting at i equals the n-gram of ``b`` at j.

    ``a_ok``/``b_ok`` (N, L) mark positions inside each segment; an n-gram counts
    only when all of its positions are inside.
    """
    n_items, length = a.shape
    eq = (a[:, :, None] == b[:, None, :]) & a_ok[:, :, None] & b_ok[:, None, :]
    out = eq.clone()
    for k in range(1, n):
        shifted = torch.zeros_like(eq)
        if k >= length:  # no n-gram fits
            return shifted
        shifted[:, : length - k, : length - k] = eq[:, k:, k:]
        out &= shifted
    return out


def segment_bleu(hyp: Tensor, ref: Tensor, hyp_mask: Tensor, ref_mask: Tensor) -> Tensor:
    """Smoothed sentence BLEU in [0, 1] of each hyp row against its ref row.

    ``hyp``/``ref``: (N, L) token ids; ``*_mask``: (N, L) bool, True on a contiguous
    run of positions (the segment).  Matches ``sacrebleu.sentence_bleu(h, [r],
    smooth_method="exp", tokenize="none")`` on the space-joined ids.
    """
    if hyp.numel() == 0:
        return hyp.new_zeros(hyp.shape[0], dtype=torch.float)
    correct, total = [], []
    for n in range(1, MAX_ORDER + 1):
        hh = _ngram_matches(hyp, hyp, hyp_mask, hyp_mask, n)
        hr = _ngram_matches(hyp, ref, hyp_mask, ref_mask, n)
        starts = hh.diagonal(dim1=1, dim2=2)  # n-gram of hyp starting at i is inside the segment
        count_h = hh.sum(2).clamp(min=1).float()
        count_r = hr.sum(2).float()
        # each distinct n-gram appears count_h times: sum min(count_h, count_r) / count_h over them
        clipped = torch.minimum(count_h, count_r) / count_h
        correct.append((clipped * starts).sum(1))
        total.append(starts.sum(1).float())
    correct = torch.stack(correct, 1)
    total = torch.stack(total, 1)
    orders = total > 0  # effective order: orders the hypothesis is long enough for
    zero = (correct < 0.5) & orders
    halvings = torch.cumsum(zero.float(), 1)  # "exp" smoothing: 1/2, 1/4, ... of the total
    prec = torch.where(zero, 1.0 / (torch.pow(2.0, halvings) * total.clamp(min=1)), correct / total.clamp(min=1))
    log_prec = torch.where(orders, prec.clamp(min=1e-30).log(), torch.zeros_like(prec))
    eff_order = orders.sum(1).clamp(min=1).float()
    hyp_len = hyp_mask.sum(1).float()
    ref_len = ref_mask.sum(1).float()
    bp = torch.where(hyp_len < ref_len, torch.exp(1 - ref_len / hyp_len.clamp(min=1)), torch.ones_like(hyp_len))
    bp = torch.where(hyp_len > 0, bp, torch.zeros_like(bp))
    score = bp * torch.exp(log_prec.sum(1) / eff_order)
    return torch.where(correct.sum(1) > 0, score, torch.zeros_like(score))


def zero_one_delta(viol_tokens: Tensor, gold_tokens: Tensor, mask: Tensor, gold_mask: Optional[Tensor] = None) -> Tensor:
    return torch.ones(viol_tokens.shape[0], dtype=torch.float, device=viol_tokens.device)


def sentence_bleu_delta(viol_tokens: Tensor, gold_tokens: Tensor, mask: Tensor,
                        gold_mask: Optional[Tensor] = None) -> Tensor:
    """``mask`` marks the violating segment; ``gold_mask`` the gold segment (the same positions
    unless the violating hypothesis finished earlier: the learning-to-stop step)."""
    return 1.0 - segment_bleu(viol_tokens, gold_tokens, mask, mask if gold_mask is None else gold_mask)


COSTS: Dict[str, Callable[..., Tensor]] = {
    "zero_one": zero_one_delta,
    "sentence_bleu": sentence_bleu_delta,
}
