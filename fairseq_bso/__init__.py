"""fairseq-bso: a fairseq plugin (``--user-dir``) for Beam Search Optimization,
constrained beam training, sequence-level knowledge distillation and magnitude
pruning (Wiseman and Rush 2016; Kim and Rush 2016; See et al. 2016).

The package is laid out by method; the import layers (foundations, method machinery, fairseq
components, entry points) are listed and checked in ``tests/test_layering.py``:

* ``fairseq_fixes/`` — patches to fairseq itself, applied on import (see its ``__init__``);
  ``fault_points`` — named no-op points the test suite arms to inject faults; ``safe_io`` — the
  writer rule and atomic writes; ``path`` — the plugin's folder.
* ``prep``, ``evaluation`` — data pipelines, BLEU on generate logs.
* ``bso/`` — the BSO search (Algorithm 1), costs, the ``bso`` criterion, BSO decoding.
* ``constraints/`` — constraints (``fairseq_bso.constraints`` is the import path for your own),
  arc-standard parsing, the ``constrained_beam_training`` task.
* ``distill/`` — the ``seq_kd`` task and its corpus store, the ``word_kd`` criterion, the lean greedy decoder.
* ``prune/`` — magnitude pruning (masks, the ``fairseq-bso-prune`` command).

Importing the package registers everything: fairseq itself auto-imports only
``tasks/`` and ``models/`` below a ``--user-dir``, so the registering modules are
imported here, as fairseq's ``examples/discriminative_reranking_nmt`` does.
"""

__version__ = "0.1.0"

from . import fairseq_fixes  # noqa: E402  (patches fairseq before anything registers)

fairseq_fixes.apply()

from .bso import criterion  # noqa: F401,E402  (registers --criterion bso)
from .constraints import task  # noqa: F401,E402  (registers --task constrained_beam_training)
from .distill import seq_kd, word_kd  # noqa: F401,E402  (registers --task seq_kd, --criterion word_kd)
from .bso import optim  # noqa: F401,E402  (registers --optimizer bso_adagrad)
from .prune import tasks as prune_tasks  # noqa: F401,E402  (registers --task translation_pruned, language_modeling_pruned)
