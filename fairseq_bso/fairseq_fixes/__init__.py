"""Every patch the plugin applies to fairseq (fairseq-fixed 0.12.3.1 / fairseq 0.12.2), and why.

Applied once by :func:`apply` when the plugin is imported (``--user-dir fairseq_bso`` or ``import fairseq_bso``):

* :mod:`.checkpoint_safety` — torch >= 2.6 loads with ``weights_only=True``; fairseq checkpoints hold an
  ``argparse.Namespace`` (fairseq issue #5610): exactly the needed types are allow-listed (safety stays on),
  and the checkpoint rank 0 broadcasts to other workers is loaded the same safe way.
* :mod:`.checkpoint_files` — ``checkpoint_last.pt`` and the other copies of a save are written through a
  temporary file renamed into place (a kill never leaves a truncated checkpoint), and an unreadable
  checkpoint is reported naming the file.

Used by the plugin's own tasks and criterions (not global patches):

* :mod:`.batching` — fairseq's ``batch_by_size`` silently drops the last partial batch when
  ``--required-batch-size-multiple`` > 1; the plugin's tasks keep every example.
* :mod:`.nonfinite` — a batch whose loss is NaN/inf is skipped and counted instead of stopping training.
"""

from . import checkpoint_files, checkpoint_safety


def apply() -> None:
    """Apply the global patches (idempotent)."""
    checkpoint_safety.allow_fairseq_checkpoint_types()
    checkpoint_safety.safe_broadcasts_between_workers()  # rank 0 sends a loaded checkpoint to the other workers
    checkpoint_files.make_checkpoint_copies_atomic()  # a kill while fairseq copies checkpoint_last.pt
    checkpoint_files.name_unreadable_checkpoints()  # a truncated or foreign checkpoint: an error naming the file
