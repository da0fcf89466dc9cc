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


def numpy_array_globals() -> list:
    """``--eval-bleu`` keeps its BLEU n-gram counts as numpy arrays in the checkpoint's saved
    metrics (``extra_state["metrics"]``), pickled as ``numpy._core.multiarray._reconstruct``,
    ``numpy.ndarray`` and ``numpy.dtype``: the globals torch's documentation names for numpy
    arrays, with the dtype classes of numpy's numeric types (never the object dtype, whose
    array would hold pickled Python objects).  numpy 1.x names the module ``numpy.core``;
    a checkpoint names whichever numpy wrote it, so both names are allowed (torch matches
    globals by name)."""
    import numpy as np

    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, under either name
    names = {f"{mod}.multiarray._reconstruct" for mod in ("numpy.core", "numpy._core")}
    numeric = "bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64".split()
    dtype_classes = {type(np.dtype(name)) for name in numeric} - {np.dtype}
    return [np.ndarray, np.dtype, *sorted(dtype_classes, key=str), *[(reconstruct, n) for n in sorted(names)]]


def allow_fairseq_checkpoint_types() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads unrestricted by default)
        add(list(FAIRSEQ_CHECKPOINT_TYPES))
        try:
            add(numpy_array_globals())
        except (TypeError, AttributeError):  # torch < 2.5: no (callable, name) entries
            pass


def broadcast_types() -> list:
    """The globals a checkpoint holds once rank 0 has loaded it: its omegaconf config and fairseq's tensor
    placeholders (found by loading a fairseq checkpoint broadcast with weights_only=True until it passed)."""
    import collections
    import typing

    from fairseq.distributed.utils import _TensorPlaceholder
    from omegaconf import DictConfig, ListConfig, base, nodes

    return [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, nodes.AnyNode, nodes.StringNode,
            nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode, typing.Any, dict, list, int, float, str, bool,
            collections.defaultdict, collections.OrderedDict, _TensorPlaceholder, *FAIRSEQ_CHECKPOINT_TYPES]


def safe_broadcasts_between_workers() -> None:
    """Distributed training: rank 0 loads a checkpoint (resume, ``--finetune-from-model``) and sends it to
    the other workers as ``torch.save`` bytes (fairseq's ``distributed.utils._broadcast_object_slow``); they
    ``torch.load`` the bytes with torch's default ``weights_only=True``, which refuses the checkpoint's
    omegaconf config and fairseq's ``_TensorPlaceholder``, so every such run with 2+ workers fails with
    "Unsupported global: GLOBAL omegaconf.dictconfig.DictConfig".  The receivers keep ``weights_only=True``
    and allow exactly those types, for that load only (a scoped ``safe_globals``, not the global list)."""
    import io

    from fairseq.distributed import utils as distributed_utils

    original = distributed_utils._broadcast_object_slow
    if getattr(original, "fairseq_bso", False) or not hasattr(torch.serialization, "safe_globals"):
        return  # already patched, or torch < 2.5 (no weights_only default, nothing to fix)

    def _broadcast_object_slow(obj, src_rank, group, dist_device):
        if distributed_utils.get_rank(group) == src_rank:
            return original(obj, src_rank, group, dist_device)
        length = torch.LongTensor([0]).to(dist_device)
        distributed_utils.broadcast(length, src=src_rank, group=group)
        buffer = torch.ByteTensor(int(length.item())).to(dist_device)
        distributed_utils.broadcast(buffer, src=src_rank, group=group)
        with torch.serialization.safe_globals(broadcast_types()):
            return torch.load(io.BytesIO(buffer.cpu().numpy()), map_location="cpu", weights_only=True)

    _broadcast_object_slow.fairseq_bso = True
    distributed_utils._broadcast_object_slow = _broadcast_object_slow
