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
A well-formed checkpoint holding a type outside the allow-list still fails with torch's own
"Unsupported global" error (see ``checkpoint_safety``).
"""

import functools
import os
import shutil
import zipfile

from ..fault_points import fault_point


class UnreadableCheckpoint(RuntimeError):
    pass


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
            return original(path, *args, **kwargs)
        except Exception as e:
            # torch writes zip archives (and read the legacy format before): a file that is neither and did not
            # load is truncated or not a checkpoint; anything else is not ours to rename
            if not os.path.isfile(path) or zipfile.is_zipfile(path) or "Unsupported global" in str(e):
                raise
            raise UnreadableCheckpoint(
                f"cannot read checkpoint {path} ({os.path.getsize(path):,} bytes): the file is truncated or not a "
                f"fairseq checkpoint ({type(e).__name__} above)") from e

    load_checkpoint_to_cpu.fairseq_bso = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
