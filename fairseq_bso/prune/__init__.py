"""Magnitude pruning (See, Luong and Manning 2016): masks and the training callback (:mod:`.masks`), and the
``fairseq-bso-prune`` command (:mod:`.cli`: stats, export, densify)."""
