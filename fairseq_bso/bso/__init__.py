"""Beam Search Optimization (Wiseman and Rush 2016): the training search (:mod:`.search`, Algorithm 1),
the costs Δ (:mod:`.costs`), the ``bso`` criterion (:mod:`.criterion`) and BSO decoding in
``fairseq-generate`` (:mod:`.decoding`)."""
