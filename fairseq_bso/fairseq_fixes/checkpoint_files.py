"""Two fixes to how fairseq writes and reads checkpoint files, applied when the plugin is imported.

Atomic copies.  fairseq saves the first checkpoint of a save (e.g. ``checkpoint_best.pt`` or
``checkpoint_3_500.pt``) atomically (temporary file, then rename), but makes the others, among them
``checkpoint_last.pt``, with ``PathManager.copy``, a plain ``shutil.copyfile`` over the old file.  A
process killed during that copy leaves a truncated ``checkpoint_last.pt`` and the restarted run cannot
load it.  Local copies now go through a temporary file renamed into place, so ``checkpoint_last.pt``
is always the old or the new checkpoint, never a part of one.

Unreadable checkpoints.  A truncated, empty or foreign file passed as a checkpoint fails deep inside
``torch.load`` with messages that do not name the file (``OSError: [Errno 22] Invalid argument``,
``EOFError``, ``Unsupported operand 160``).  Such failures are re-raised naming the file and its size.
A checkpoint holding a type outside the allow-list (see ``checkpoint_safety``), in torch's zip format or
its legacy one, is refused with :class:`UnsafeCheckpoint` naming the file and the blocked global (e.g.
``posix.system``); torch's own text, which suggests loading with ``weights_only=False``, is not shown.

Non-finite weights.  A checkpoint whose model weights hold NaN or infinity is refused with
:class:`NonFiniteCheckpoint` naming each such parameter, its count of non-finite values and the first
position (generation would print garbage, training would go on from NaN).
"""

import functools
import os
import re
import shutil
import zipfile

from ..fault_points import fault_point


class UnreadableCheckpoint(RuntimeError):
    pass


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint holding a pickled global that safe loading blocks; the message names it."""


class NonFiniteCheckpoint(ValueError):
    """A checkpoint whose model weights hold NaN or infinity; the message names the parameters."""


_GLOBAL_RE = re.compile(r"GLOBAL\s+([\w.]+)")
_FINDING_RE = re.compile(r"(Unsupported operand \d+|Unsupported class [^\n]*|Unsupported [\w ]+ [^\n]*)")


def blocked_global(error: BaseException):
    """The global torch's safe unpickler refused (``fractions.Fraction``, ``posix.system``), or None."""
    m = _GLOBAL_RE.search(str(error))
    return m.group(1) if m else None


def describe_load_error(path: str, error: BaseException) -> str:
    """One line for a checkpoint that did not load: the blocked global, or truncated/not a checkpoint."""
    name = blocked_global(error)
    if name is not None:
        return (f"refusing checkpoint {path}: it holds the pickled Python global {name}, which fairseq checkpoints "
                f"do not hold; safe loading (weights_only) blocks it because unpickling it could run code. Not "
                f"loaded: use a checkpoint written by fairseq-train")
    size = f"{os.path.getsize(path):,} bytes" if os.path.isfile(path) else "missing"
    text = str(error).strip()
    if "weights_only" in text:  # torch's safe-loading text: keep its finding, never its advice to switch safety off
        m = _FINDING_RE.search(text)
        detail = m.group(1).strip() if m else "safe loading refused it"
    else:
        detail = text.splitlines()[0][:200] if text else ""
    return (f"cannot read checkpoint {path} ({size}): the file is truncated or not a fairseq checkpoint "
            f"({type(error).__name__}{': ' + detail if detail else ''})")


def nonfinite_parameters(model_state) -> list:
    """(name, non-finite count, numel, first flat index) of every floating tensor holding NaN or infinity."""
    import torch

    found = []
    for name, t in (model_state or {}).items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                idx = int(bad.reshape(-1).nonzero()[0, 0])
                pos = list(torch.unravel_index(torch.tensor(idx), t.shape)) if t.dim() else []
                found.append((name, int(bad.sum()), t.numel(), [int(p) for p in pos]))
    return found


def describe_nonfinite(path: str, found) -> str:
    listed = ", ".join(f"{name} ({n:,} of {total:,} values, first at {pos})" for name, n, total, pos in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return (f"checkpoint {path} has non-finite weights (NaN or infinity) in {len(found)} parameter(s): "
            f"{listed}{more}; it cannot be used (a run that diverged, or a damaged file)")


def atomic_copy(src_path: str, dst_path: str) -> bool:
    tmp = dst_path + ".tmp"
    shutil.copyfile(src_path, tmp)
    fault_point("checkpoint_files.copy", path=tmp)  # tests: a kill halfway through the copy
    os.replace(tmp, dst_path)
    return True


def make_checkpoint_copies_atomic() -> None:
    from fairseq.file_io import PathManager

    original = PathManager.copy
    if getattr(original, "fairseq_bso", False):
        return

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(dst_path):  # a remote store (iopath): leave it to iopath
            return original(src_path, dst_path, overwrite)
        return atomic_copy(src_path, dst_path)

    copy.fairseq_bso = True
    PathManager.copy = staticmethod(copy)


def name_unreadable_checkpoints() -> None:
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "fairseq_bso", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            state = original(path, *args, **kwargs)
        except Exception as e:
            if blocked_global(e) is not None:  # safe loading refused a global: name it, never advise unsafe loading
                raise UnsafeCheckpoint(describe_load_error(path, e)) from None
            # torch writes zip archives (and read the legacy format before): a file that is neither and did not
            # load is truncated or not a checkpoint; anything else is not ours to rename
            if not os.path.isfile(path) or zipfile.is_zipfile(path):
                raise
            if "weights_only" in str(e):  # torch's text advises switching safe loading off: not shown
                raise UnreadableCheckpoint(describe_load_error(path, e)) from None
            raise UnreadableCheckpoint(
                f"cannot read checkpoint {path} ({os.path.getsize(path):,} bytes): the file is truncated or not a "
                f"fairseq checkpoint ({type(e).__name__} above)") from e
        found = nonfinite_parameters(state.get("model") if isinstance(state, dict) else None)
        if found:
            raise NonFiniteCheckpoint(describe_nonfinite(path, found))
        return state

    load_checkpoint_to_cpu.fairseq_bso = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
