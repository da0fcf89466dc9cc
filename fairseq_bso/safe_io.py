"""The one rule every writer of the package follows, and the text checks every reader applies.

Writing (``fairseq-bso-prep``, ``--task seq_kd``, ``fairseq-bso-prune export/densify``,
``fairseq-bso-parsing to-actions``; recipes and benchmarks should call the same functions):

* :func:`check_outputs` refuses an output path that *is* one of the command's inputs (same path,
  a symlink to it, a hard link of it, or a folder to be replaced that holds it), two outputs that
  are the same file, and an existing file the command did not write itself (see the ledger below),
  each with an :class:`OutputRefused` error naming both paths.  ``force=True`` (the CLIs'
  ``--force``) lifts only the last refusal: an input is never overwritten.
* :func:`write_lines`, :func:`write_text`, :func:`write_json` and :func:`write_with` write one file
  through a temporary file in the same folder renamed into place; the file gets the permissions the
  umask gives a new file (``0o666 & ~umask``; ``tempfile.mkstemp`` alone gives ``0o600``).  A failed
  write (a full disk, ``ulimit -f``) removes the temporary file, leaves the old file as it was and
  raises :class:`WriteError` naming the destination.
* :class:`StagedOutputs` writes a multi-file output (files and folders, e.g. a corpus and its ``bin/``)
  into a temporary folder inside the destination and renames each into place only once everything
  has been written: an error before :meth:`StagedOutputs.commit` leaves the old output whole (a kill
  *during* the commit, a few renames, can leave a mix of old and new files).

The ledger.  Each folder an output goes into holds ``.fairseq-bso-outputs.json``: for every file or
folder a command wrote there, the command's name and the size and modification time of what it wrote
(of every file below a folder).  A later run of the same command may replace exactly what is recorded
and still unchanged; a file that is not in the ledger, or that changed since (edited, replaced, a
symlink put in its place), is "a file the command did not create".  The ledger is updated after each
commit through the same atomic writer.

Reading: :func:`check_text` finds what would silently change tokens or line alignment in a text file
(a byte-order mark, NUL and other control characters, carriage returns inside a line, line separators
that some tools split on and others do not, zero-width and other invisible format characters, tabs
where text is whitespace-tokenized) and names file, line and column.
"""

import json
import os
import re
import shutil
import tempfile
import unicodedata
from typing import Callable, Dict, Iterable, List, Optional, Sequence

LEDGER = ".fairseq-bso-outputs.json"


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


class OutputRefused(ValueError):
    """An output path the writer rule refuses; the message names the output and the file it would destroy."""


class WriteError(OSError):
    """A write that failed (full disk, file size limit, permissions), naming the destination."""

    def __init__(self, errno, message: str):
        super().__init__(message)
        self.errno = errno


# -- permissions ---------------------------------------------------------------------------------------------
def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 minus the umask."""
    return 0o666 & ~current_umask()


# -- the clobber check ---------------------------------------------------------------------------------------
def same_file(a: str, b: str) -> bool:
    """``a`` and ``b`` name the same file: equal paths, a symlink to it or a hard link of it."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or below it (symlinks resolved)."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def _signature(path: str):
    st = os.lstat(path)
    if os.path.isdir(path) and not os.path.islink(path):
        files = {}
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(root, name)
                s = os.lstat(full)
                files[os.path.relpath(full, path)] = [s.st_size, s.st_mtime_ns]
        return {"dir": files}
    if os.path.islink(path):
        return {"link": os.readlink(path)}
    return {"file": [st.st_size, st.st_mtime_ns]}


def _ledger_path(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), LEDGER)


def _read_ledger(folder: str) -> Dict:
    path = os.path.join(folder, LEDGER)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def written_by(path: str, command: str) -> bool:
    """``path`` is recorded in its folder's ledger as written by ``command`` and has not changed since."""
    entry = _read_ledger(os.path.dirname(os.path.abspath(path))).get(os.path.basename(os.path.abspath(path)))
    if not entry or entry.get("by") != command:
        return False
    try:
        return entry.get("signature") == json.loads(json.dumps(_signature(path)))
    except OSError:
        return False


def record_outputs(paths: Sequence[str], command: str) -> None:
    """Record ``paths`` (just written by ``command``) in their folders' ledgers."""
    by_folder: Dict[str, List[str]] = {}
    for p in paths:
        if os.path.lexists(p):
            by_folder.setdefault(os.path.dirname(os.path.abspath(p)), []).append(os.path.abspath(p))
    for folder, items in by_folder.items():
        ledger = _read_ledger(folder)
        for p in items:
            ledger[os.path.basename(p)] = {"by": command, "signature": _signature(p)}
        _write_atomic(os.path.join(folder, LEDGER), lambda f: f.write(json.dumps(ledger, indent=1, sort_keys=True)),
                      binary=False)


def check_outputs(outputs: Sequence[str], inputs: Sequence[str] = (), command: str = "this command",
                  force: bool = False, force_option: Optional[str] = "--force", what: str = "") -> None:
    """Refuse outputs that would destroy an input, each other or a file ``command`` did not write.

    ``what`` prefixes the messages (e.g. ``"--kd-output-dir raw"``); ``force`` allows overwriting existing
    files the command did not write (never an input)."""
    lead = f"{what}: " if what else ""
    outputs = [o for o in outputs if o]
    for i, out in enumerate(outputs):
        for other in outputs[i + 1:]:
            if same_file(out, other):
                raise OutputRefused(f"{lead}the outputs {out} and {other} are the same file: give them different paths")
        for inp in inputs:
            if not inp:
                continue
            if same_file(out, inp) or (os.path.isdir(out) and not os.path.islink(out) and is_within(inp, out)):
                how = "is" if same_file(out, inp) else "holds"
                link = ""
                if os.path.abspath(out) != os.path.abspath(inp):
                    link = (" (a symlink to it)" if os.path.islink(out) else
                            " (a hard link of it)" if os.path.isfile(out) and os.path.isfile(inp) else "")
                raise OutputRefused(f"{lead}the output {out} {how} the input {inp}{link}: writing it would destroy the "
                                    f"input; choose another output path")
    for out in outputs:
        if os.path.lexists(out) and not force and not written_by(out, command):
            kind = ("folder" if os.path.isdir(out) and not os.path.islink(out) else
                    "symlink" if os.path.islink(out) else "file")
            hint = f", or pass {force_option} to overwrite it" if force_option else ""
            raise OutputRefused(
                f"{lead}the output {out} exists and is a {kind} {command} did not write (or one changed since it "
                f"did, see {_ledger_path(out)}): refusing to overwrite it; move it away or choose another output "
                f"path{hint}")


def check_output_folder(folder: str, what: str) -> None:
    """A folder outputs go into: a folder or nothing yet (a file there is refused)."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputRefused(f"{what}: {folder} is a file, not a folder: name a folder (it is created if missing)")


def check_parent_exists(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputRefused(f"{what + ': ' if what else ''}cannot write {path}: the folder {parent} does not exist "
                            f"(create it first)")


# -- atomic single-file writers ---------------------------------------------------------------------------------
def _write_atomic(path: str, fill: Callable, binary: bool) -> None:
    def save(tmp: str) -> None:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": "\n"})) as f:
            fill(f)

    write_with(path, save)


def write_lines(path: str, lines: Iterable[str]) -> None:
    """Write ``lines`` (each followed by ``\\n``) to ``path`` atomically, with the umask's permissions."""
    def fill(f):
        for line in lines:
            f.write(line + "\n")
    _write_atomic(path, fill, binary=False)


def write_text(path: str, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text), binary=False)


def write_json(path: str, obj, **kwargs) -> None:
    """``json.dump(obj)`` atomically (kwargs go to ``json.dumps``, e.g. ``indent=2``), ending in a newline."""
    write_text(path, json.dumps(obj, **kwargs) + "\n")


def write_with(path: str, save: Callable[[str], None]) -> int:
    """Atomic write by a function that writes a path, e.g. ``lambda p: torch.save(obj, p)``; returns the size."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path) + ".")
    os.close(fd)
    try:
        save(tmp)
        os.chmod(tmp, new_file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(e.errno, f"{path}: cannot write ({e.strerror or e}); the old file, if any, is "
                                      f"unchanged") from e
        if isinstance(e, RuntimeError) and "write" in str(e).lower():  # torch.save's "PytorchStreamWriter failed"
            raise WriteError(None, f"{path}: cannot write ({str(e).splitlines()[0]}); the old file, if any, is "
                                   f"unchanged") from e
        raise
    return os.path.getsize(path)


def write_outputs(files: Dict[str, Iterable[str]], command: str, inputs: Sequence[str] = (), force: bool = False,
                  what: str = "") -> None:
    """Several text files (path -> lines) as one output: checked, staged, renamed into place, recorded."""
    check_outputs(list(files), inputs, command, force, what=what)
    staged = []
    try:
        for path, lines in files.items():
            folder = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                raise WriteError(e.errno, f"{what + ': ' if what else ''}cannot create the folder {folder} "
                                          f"({e.strerror})") from e
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path) + ".")
            os.close(fd)
            staged.append((tmp, path))
            try:
                write_lines(tmp, lines)
            except WriteError as e:
                raise WriteError(e.errno, str(e).replace(tmp, path)) from e
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
    record_outputs(list(files), command)


# -- multi-file outputs: a temporary folder renamed into place --------------------------------------------------
class StagedOutputs:
    """Outputs ``names`` (files or folders) of ``folder``, written under :meth:`path` and renamed into place by
    :meth:`commit`.  Names not written by the time of the commit are removed from ``folder`` if they exist
    there (they were checked like the others), so the folder holds exactly this run's output.

        with StagedOutputs(out, ["train.src", "bin"], "fairseq-bso-prep", inputs=[...], what="--out " + out) as st:
            write_lines(st.path("train.src"), lines)
            ...
            st.commit()

    Leaving the block without :meth:`commit` (an error) removes the temporary folder and leaves ``folder``
    as it was (a folder the constructor created is removed again if still empty)."""

    def __init__(self, folder: str, names: Sequence[str], command: str, inputs: Sequence[str] = (),
                 force: bool = False, what: str = ""):
        check_output_folder(folder, what or folder)
        self.folder, self.names, self.command = folder, list(names), command
        check_outputs([os.path.join(folder, n) for n in self.names], inputs, command, force, what=what)
        self.created = not os.path.exists(folder)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise WriteError(e.errno, f"{what or folder}: cannot create the folder {folder} ({e.strerror})") from e
        self.tmp = tempfile.mkdtemp(dir=folder, prefix=".tmp-" + command.replace(" ", "-") + ".")
        self.committed = False

    def path(self, name: str) -> str:
        if name not in self.names:
            raise KeyError(f"{name} is not one of the staged outputs {self.names}")
        return os.path.join(self.tmp, name)

    def commit(self) -> None:
        trash = tempfile.mkdtemp(dir=self.folder, prefix=".old-")
        try:
            for name in self.names:
                src, dst = os.path.join(self.tmp, name), os.path.join(self.folder, name)
                if os.path.lexists(dst) and (os.path.isdir(dst) and not os.path.islink(dst)):
                    os.rename(dst, os.path.join(trash, name))
                if os.path.lexists(src):
                    os.replace(src, dst)
                elif os.path.lexists(dst):
                    os.unlink(dst)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.committed = True
        record_outputs([os.path.join(self.folder, n) for n in self.names], self.command)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.created:
                try:
                    leftovers = os.listdir(self.folder)
                    if not leftovers:
                        os.rmdir(self.folder)
                except OSError:
                    pass
        return False


# -- readers: text that is not what it looks like -----------------------------------------------------------
# Characters str.splitlines() (and so many Python tools) treat as line ends, which fairseq and `wc -l` do not.
LINE_SEPARATORS = {"\x0b": "LINE TABULATION", "\x0c": "FORM FEED", "\x1c": "FILE SEPARATOR",
                   "\x1d": "GROUP SEPARATOR", "\x1e": "RECORD SEPARATOR", "\x85": "NEXT LINE",
                   "\u2028": "LINE SEPARATOR", "\u2029": "PARAGRAPH SEPARATOR"}
# Format characters kept: joiners that scripts (Persian, Indic, emoji) need inside words.
ALLOWED_FORMAT = {"\u200c", "\u200d"}


def _char_name(ch: str) -> str:
    return f"U+{ord(ch):04X} {unicodedata.name(ch, LINE_SEPARATORS.get(ch, 'control character'))}"


_SUSPECT_RE = re.compile(r"[^\t\x20-\x7e]")  # anything but tabs and printable ASCII: looked at one by one
_BAD_CHARS: Dict[str, bool] = {}


def _is_bad(ch: str) -> bool:
    bad = _BAD_CHARS.get(ch)
    if bad is None:
        bad = _BAD_CHARS[ch] = (ch in LINE_SEPARATORS or unicodedata.category(ch) == "Cc"
                                or (unicodedata.category(ch) == "Cf" and ch not in ALLOWED_FORMAT))
    return bad


def check_line(path: str, number: int, line: str, tabs: bool = True) -> None:
    """Refuse a character of ``line`` (without its line end) that would silently change tokens or alignment."""
    if "\t" in line and not tabs:
        col = line.index("\t") + 1
        raise DataError(f"{path}:{number}:{col}: a tab in a text of whitespace-separated tokens (a "
                        f"tab-separated file, e.g. source<TAB>target, where one sentence per line is "
                        f"expected?); replace the tabs by spaces if they separate words")
    for m in _SUSPECT_RE.finditer(line):
        ch, col = m.group(), m.start() + 1
        if not _is_bad(ch):
            continue
        if ch == "\r":
            raise DataError(f"{path}:{number}:{col}: a carriage return (U+000D) inside the line: some tools end "
                            f"the line there, others do not, and the sides of a corpus would no longer line up; "
                            f"remove it (files with CR LF line ends are fine)")
        if ch in LINE_SEPARATORS:
            raise DataError(f"{path}:{number}:{col}: {_char_name(ch)}, which Python's splitlines() takes for a "
                            f"line end and fairseq does not (the lines would no longer line up); replace it by "
                            f"a space")
        if ch == "\x00":
            raise DataError(f"{path}:{number}:{col}: a NUL byte: this is not a text file")
        if ch == "\ufeff":
            where = "at the start of the file (a byte-order mark)" if number == 1 and col == 1 else "inside the text"
            raise DataError(f"{path}:{number}:{col}: U+FEFF {where}: invisible, it would become part of the "
                            f"token it touches; remove it (e.g. re-save the file as UTF-8 without BOM)")
        if unicodedata.category(ch) == "Cc":
            raise DataError(f"{path}:{number}:{col}: the control character {_char_name(ch)} (invisible; it would "
                            f"become part of a token)")
        raise DataError(f"{path}:{number}:{col}: the invisible character {_char_name(ch)}: two tokens that "
                        f"look the same would differ; remove it")


def read_text_lines(path: str, tabs: bool = True, opener: Optional[Callable] = None) -> List[str]:
    """The lines of a UTF-8 text file without their line ends (``\\n`` or ``\\r\\n``), every line checked by
    :func:`check_line`; a decoding error names the line."""
    try:
        if opener is not None:
            with opener(path) as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        number = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{number}:{col}: not UTF-8 text (byte 0x{data[e.start]:02x}: {e.reason})") from e
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = []
    for number, line in enumerate(lines, 1):
        if line.endswith("\r"):
            line = line[:-1]
        check_line(path, number, line, tabs=tabs)
        out.append(line)
    return out
