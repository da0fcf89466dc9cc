"""Fault injection for the kill-and-resume tests: a real SIGKILL in the middle of a write.

    python3 tests/faults.py fairseq-generate ARGS...     (or any console script: fairseq-train, ...)

runs the console script's entry point in this process, with the plugin's fault points
(``fairseq_bso.fault_points``) armed from the environment:

    FAIRSEQ_BSO_KILL_AT_BATCH=N   the N-th seq_kd batch written to the shard log: half of its first line is
                                  written and fsync'd, then SIGKILL (a kill in the middle of the write)
    FAIRSEQ_BSO_KILL_IN_COPY=N    the N-th checkpoint copy (e.g. to checkpoint_last.pt): the temporary copy is
                                  cut to half its size, then SIGKILL (before the rename)

``command(cmd)`` turns a console-script command line into this one.
"""

import os
import signal
import sys
from typing import Callable, Dict, List, Sequence

_calls: Dict[str, int] = {}


def kill_at(env: str, tear: Callable[[], None]) -> None:
    """When the environment sets ``env=N``, the N-th call runs ``tear()`` (leaving a partial write behind, as a
    kill in the middle of it would) and SIGKILLs this process."""
    _calls[env] = _calls.get(env, 0) + 1
    at = os.environ.get(env)
    if at and _calls[env] == int(at):
        tear()
        os.kill(os.getpid(), signal.SIGKILL)


def _tear_log(log, text: str) -> None:
    log.write(text[: text.find("\n") // 2])
    log.flush()
    os.fsync(log.fileno())


def _tear_copy(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def arm() -> None:
    from fairseq_bso import fault_points as hooks

    hooks.armed["seq_kd.append_batch"] = lambda log, text: kill_at("FAIRSEQ_BSO_KILL_AT_BATCH",
                                                                   lambda: _tear_log(log, text))
    hooks.armed["checkpoint_files.copy"] = lambda path: kill_at("FAIRSEQ_BSO_KILL_IN_COPY", lambda: _tear_copy(path))


def command(cmd: Sequence[str]) -> List[str]:
    """The same command run through this file, so that the fault points are armed."""
    return [sys.executable, os.path.abspath(__file__), *cmd]


def main(argv: Sequence[str]) -> None:
    from importlib.metadata import entry_points

    name, args = argv[0], list(argv[1:])
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == name]
    arm()
    sys.argv = [name, *args]
    sys.exit(entry.load()())


if __name__ == "__main__":
    main(sys.argv[1:])
