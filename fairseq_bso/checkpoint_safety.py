"""Load fairseq checkpoints with torch's safe unpickler (``weights_only=True``).

torch >= 2.6 loads with ``weights_only=True`` by default, which refuses every
pickled global that is not allow-listed.  fairseq checkpoints hold a few plain
Python types besides tensors (fairseq issue #5610): the legacy models' config is
an ``argparse.Namespace`` kept inside ``cfg``.  We allow-list exactly those
types.  Safety stays on: a checkpoint holding any other global still fails with
torch's "Unsupported global" error.
"""

import argparse

import torch

# Exactly the non-tensor globals found in checkpoints written by fairseq-train
# (fairseq 0.12.2 and fairseq-fixed 0.12.3.1); tests/test_checkpoint_loading.py
# checks that a real checkpoint loads and that anything else is refused.
FAIRSEQ_CHECKPOINT_TYPES = (argparse.Namespace,)


def allow_fairseq_checkpoint_types() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads unrestricted by default)
        add(list(FAIRSEQ_CHECKPOINT_TYPES))
