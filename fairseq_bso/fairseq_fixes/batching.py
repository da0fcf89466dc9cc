"""Batches that hold every example: the plugin's tasks keep the last partial batch fairseq drops.

fairseq-fixed 0.12.3's ``fairseq.data.data_utils.batch_by_size`` (which every ``FairseqDataset.batch_by_size``,
so every task's ``get_batch_iterator``, goes through) ends with::

    if bsz_mult > 1 and len(b[-1]) % bsz_mult != 0:
        b = b[:-1]

where ``bsz_mult`` is ``--required-batch-size-multiple`` (default 8).  Its Cython batcher
(``data_utils_fast.batch_by_size_vec``) cuts a full batch to a multiple of ``bsz_mult`` and ends with the
remainder in a batch of its own, so that line drops the last 1 to ``bsz_mult - 1`` examples of the ordered
list, silently: 1,500 sentences with ``--batch-size 64`` give batches 22 x 64, 64, 24 and 4, and the 4 are
gone, from ``fairseq-generate``'s output, from every training epoch and from validation.

``KeepEveryExample`` is mixed into the plugin's tasks: their batches are fairseq's batches plus one more batch
holding the examples fairseq left out (after its size filter), in fairseq's order.
"""

import contextlib
from typing import List, Sequence

import numpy as np


def with_left_out(batches: Sequence[np.ndarray], indices: np.ndarray) -> List[np.ndarray]:
    """``batches`` plus one batch of the ``indices`` that are in none of them (in the order of ``indices``)."""
    batches = list(batches)
    if sum(len(b) for b in batches) >= len(indices):
        return batches
    batched = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    left_out = indices[~np.isin(indices, batched)]
    if len(left_out):
        batches.append(left_out.astype(np.int64, copy=False))
    return batches


@contextlib.contextmanager
def keep_last_partial_batch():
    """Within the block, ``data_utils.batch_by_size`` returns every example it was given."""
    from fairseq.data import data_utils

    original = data_utils.batch_by_size

    def batch_by_size(indices, *args, **kwargs):
        if not isinstance(indices, np.ndarray):
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        batches = original(indices, *args, **kwargs)
        if kwargs.get("fixed_shapes") is not None or (len(args) >= 6 and args[5] is not None):
            return batches  # fixed batch shapes: fairseq chooses which examples fit; not used by translation data
        return with_left_out(batches, indices)

    data_utils.batch_by_size = batch_by_size
    try:
        yield
    finally:
        data_utils.batch_by_size = original


class KeepEveryExample:
    """Task mixin (before the fairseq task in the bases): ``get_batch_iterator`` keeps the last partial batch."""

    def get_batch_iterator(self, dataset, *args, **kwargs):
        with keep_last_partial_batch():
            iterator = super().get_batch_iterator(dataset, *args, **kwargs)
        sampler = iterator.batch_sampler
        if callable(sampler) and not getattr(sampler, "keeps_every_example", False):
            # --rebuild-batches: fairseq makes the batches of each epoch later, outside this call

            def make_batches(*a, **kw):
                with keep_last_partial_batch():
                    return sampler(*a, **kw)

            make_batches.keeps_every_example = True
            iterator.batch_sampler = make_batches
        return iterator
