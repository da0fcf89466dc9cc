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

``SameBatchesOnResume`` is mixed into them too: a resumed run trains on the batches of the uninterrupted run
(see its docstring).  ``PluginBatching`` is the two together, in the order every plugin task uses:
``constrained_beam_training``, ``seq_kd`` (which only generates, in epoch 1: ``SameBatchesOnResume`` has nothing
to do there), and the pruned twins (``translation_pruned``, ``language_modeling_pruned``, a user's
``register_pruned_task``).  Stock fairseq tasks (``--task translation``, ...) have neither fix.
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


class SameBatchesOnResume:
    """Task mixin (before the fairseq task in the bases): a resumed run trains on the uninterrupted run's batches.

    fairseq-fixed 0.12.3 builds the batches with the numpy seed ``seed + epoch``, ``epoch`` being the epoch in
    which the (cached, reused) iterator is created: 1 in an uninterrupted run, the resume epoch after a restart.
    A run resumed in epoch >= 2 would then train on other batches than the uninterrupted run, and a mid-epoch
    resume would skip the first batches of the *other* batching (some examples seen twice in that epoch, some
    never).  Build the batches of epoch 1, as the uninterrupted run does.  Only when fairseq reuses one iterator
    across epochs (``can_reuse_epoch_itr``, no ``--rebuild-batches``, no ``disable_iterator_cache``): otherwise
    fairseq rebuilds the batches every epoch in both runs alike."""

    def get_batch_iterator(self, dataset, *args, **kwargs):
        epoch = kwargs.get("epoch", 1)
        cached_across_epochs = (
            self.can_reuse_epoch_itr(dataset) and not kwargs.get("disable_iterator_cache", False)
            and not kwargs.get("update_epoch_batch_itr", False)
            and not getattr(getattr(self, "cfg", None) or getattr(self, "args", None), "rebuild_batches", False))
        if epoch <= 1 or not cached_across_epochs or dataset in self.dataset_to_epoch_iter:
            return super().get_batch_iterator(dataset, *args, **kwargs)
        iterator = super().get_batch_iterator(dataset, *args, **{**kwargs, "epoch": 1})
        iterator.epoch = epoch  # the epoch it starts in (a resume then loads the position within it)
        dataset.set_epoch(epoch)
        return iterator


class PluginBatching(SameBatchesOnResume, KeepEveryExample):
    """Both batching fixes, for any fairseq task: ``class MyTask(PluginBatching, TranslationTask)``."""
