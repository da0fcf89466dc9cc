"""Tasks of the plugin; each module registers itself with fairseq."""

from . import constrained_beam_training, seq_kd  # noqa: F401
