"""Criterions of the plugin; each module registers itself with fairseq."""

from . import bso  # noqa: F401
