"""Named points where the test suite's kill-and-resume tests inject a fault (``tests/faults.py`` arms them).

Nothing is armed in normal use, and ``fault_point`` does nothing.
"""

from typing import Callable, Dict

armed: Dict[str, Callable[..., None]] = {}


def fault_point(name: str, **context) -> None:
    handler = armed.get(name)
    if handler is not None:
        handler(**context)
