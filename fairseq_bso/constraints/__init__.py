"""Constraints that shape the beam in training (ConBSO) and in ``fairseq-generate``.

``fairseq_bso.constraints`` is the import path for a user's own constraint (``register_constraint``,
``Constraint``, ``NEG_INF``; see ``examples/constraints``).  :mod:`.base` holds the registry and the word-order
and arc-standard constraints, :mod:`.parsing` the arc-standard data pipeline (``fairseq-bso-parsing``),
:mod:`.task` the ``constrained_beam_training`` task.
"""

from .base import (  # noqa: F401
    CONSTRAINTS,
    NEG_INF,
    ArcStandardConstraint,
    Constraint,
    WordOrderConstraint,
    build_constraint,
    register_constraint,
)
