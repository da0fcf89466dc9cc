"""Criterions of the plugin; each module registers itself with fairseq."""

from . import bso, word_kd  # noqa: F401
