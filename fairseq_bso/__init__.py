"""fairseq-bso: a fairseq plugin (``--user-dir``) for Beam Search Optimization,
constrained beam training, sequence-level knowledge distillation and magnitude
pruning (Wiseman and Rush 2016; Kim and Rush 2016; See et al. 2016).

Importing the package registers everything: fairseq itself auto-imports only
``tasks/`` and ``models/`` below a ``--user-dir``, so criterions and the rest are
imported here, as fairseq's ``examples/discriminative_reranking_nmt`` does.
"""

__version__ = "0.1.0"

from . import checkpoint_files, checkpoint_safety  # noqa: E402

checkpoint_safety.allow_fairseq_checkpoint_types()
checkpoint_safety.safe_broadcasts_between_workers()  # rank 0 sends a loaded checkpoint to the other workers
checkpoint_files.make_checkpoint_copies_atomic()  # a kill while fairseq copies checkpoint_last.pt
checkpoint_files.name_unreadable_checkpoints()  # a truncated or foreign checkpoint: an error naming the file

from . import criterions, tasks  # noqa: F401,E402
