"""fairseq-bso: a fairseq plugin (``--user-dir``) for Beam Search Optimization,
constrained beam training, sequence-level knowledge distillation and magnitude
pruning (Wiseman and Rush 2016; Kim and Rush 2016; See et al. 2016).

Importing the package registers everything: fairseq itself auto-imports only
``tasks/`` and ``models/`` below a ``--user-dir``, so criterions and the rest are
imported here, as fairseq's ``examples/discriminative_reranking_nmt`` does.
"""

__version__ = "0.1.0"

from . import checkpoint_safety  # noqa: F401  (allow-lists fairseq checkpoint types)

checkpoint_safety.allow_fairseq_checkpoint_types()

from . import criterions, tasks  # noqa: F401,E402
