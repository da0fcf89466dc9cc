"""Knowledge distillation (Kim and Rush 2016): Seq-KD / Seq-Inter corpora from ``fairseq-generate --task
seq_kd`` (:mod:`.seq_kd`, its resumable store :mod:`.corpus`), the ``word_kd`` criterion (:mod:`.word_kd`) and
the lean greedy decoder for students (:mod:`.greedy`)."""
