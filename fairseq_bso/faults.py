"""Fault injection for the kill-and-resume tests: a real SIGKILL in the middle of a write."""

import os
import signal
from typing import Callable, Dict

_calls: Dict[str, int] = {}


def kill_at(env: str, tear: Callable[[], None]) -> None:
    """Tests only: when the environment sets ``env=N``, the N-th call runs ``tear()`` (leaving a partial
    write behind, as a kill in the middle of it would) and SIGKILLs this process."""
    _calls[env] = _calls.get(env, 0) + 1
    at = os.environ.get(env)
    if at and _calls[env] == int(at):
        tear()
        os.kill(os.getpid(), signal.SIGKILL)
