"""``--task seq_kd``: sequence-level knowledge distillation corpora from ``fairseq-generate``
(Kim and Rush, EMNLP 2016).

    fairseq-generate DATA --user-dir fairseq_bso --task seq_kd --path teacher.pt \\
        --gen-subset train --beam 5 --kd-output-dir DIR [--kd-selection seq_inter --nbest 5]

writes ``DIR/train.<src>`` and ``DIR/train.<tgt>``: every source of the subset in
sample-id order (the order of the binarized data) and the teacher's output, both
as the token strings of the binarized data (subwords kept), ready for
``fairseq-preprocess --srcdict/--tgtdict`` with the teacher's dictionaries.

- ``--kd-selection beam`` (Seq-KD): the teacher's best hypothesis, exactly the
  ``H-`` line plain ``fairseq-generate`` prints with the same options (without
  ``--post-process``/``--remove-bpe`` or ``--replace-unk``, which the corpus cannot
  honour: the task refuses them).
- ``--kd-selection seq_inter`` (Seq-Inter): among the ``--nbest`` hypotheses, the one
  with the highest sentence BLEU against the reference (sacrebleu's "exp"
  smoothing, on the subword tokens; the earlier-ranked one wins ties).

Every sentence of the subset is generated whatever the batch options: fairseq
drops the last partial batch when ``--required-batch-size-multiple`` (default 8)
is > 1, the task keeps it (``fairseq_bso.fairseq_fixes.batching``).  Only sentences longer than
the model accepts, left out with ``--skip-invalid-size-inputs-valid-test``, are
missing from the corpus, and the merge names them.

Everything else is the translation task: the task only watches the batches go
by (``inference_step``) and keeps its own shard log; see ``fairseq_bso.distill.corpus``
for resume, sharding (``--distributed-world-size N --distributed-rank r``, one
process per shard) and the atomic merge.

The resume is bound to its data: the manifest records the data folder, a SHA-256 of the
subset's binarized files and the dictionaries (:func:`data_identity`), a SHA-256 of the
teacher's weights (:func:`weights_sha256`, names and bytes of every tensor of the ensemble's
state dicts) and the generation options; a run against anything else is refused naming each
difference.  Outputs follow ``fairseq_bso.safe_io``'s writer rule (checked before generating).
"""

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import iterators
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from ..fairseq_fixes.batching import KeepEveryExample
from ..bso.costs import segment_bleu
from .corpus import CorpusStore

logger = logging.getLogger(__name__)


@dataclass
class SeqKDConfig(TranslationConfig):
    kd_output_dir: Optional[str] = field(
        default=None, metadata={"help": "folder for the distillation corpus <subset>.<src|tgt> (required)"})
    kd_selection: ChoiceEnum(["beam", "seq_inter"]) = field(  # type: ignore
        default="beam",
        metadata={"help": "beam: the teacher's best hypothesis (Seq-KD); seq_inter: of the --nbest hypotheses the "
                          "one closest to the reference by sentence BLEU (Seq-Inter)"})
    kd_write_scores: bool = field(
        default=False, metadata={"help": "also write <subset>.score: the teacher's score of each kept hypothesis (the number fairseq-generate "
                          "prints on its H- line: length-normalized log2 probability)"})
    # fairseq-generate's options that change the printed text but not the corpus (no help: not task options,
    # fairseq fills them in from --post-process/--remove-bpe and --replace-unk)
    post_process: Optional[str] = II("common_eval.post_process")
    replace_unk: Optional[str] = II("generation.replace_unk")


def check_options(cfg) -> None:
    """The corpus is the H- line's tokens as they are: refuse options it would silently ignore."""
    for value, option in ((getattr(cfg, "post_process", None), "--post-process/--remove-bpe"),
                          (getattr(cfg, "replace_unk", None), "--replace-unk")):
        if value is not None and not str(value).startswith("${"):
            raise ValueError(
                f"--task seq_kd does not apply {option} (got {value!r}): the corpus keeps the tokens of the binarized "
                f"data, subwords and <unk> included, so that fairseq-preprocess --srcdict/--tgtdict binarizes it with "
                f"the teacher's dictionaries. Drop {option.split('/')[0]}; post-process the written corpus yourself "
                f"if you need to")


def select_seq_inter(candidates: List[List[torch.Tensor]], references: List[torch.Tensor], pad: int) -> List[int]:
    """Index of the max sentence-BLEU candidate per sentence, all candidates of a batch scored at once."""
    flat_h = [h for cands in candidates for h in cands]
    flat_r = [references[i] for i, cands in enumerate(candidates) for _ in cands]
    length = max([len(t) for t in flat_h + flat_r] + [1])

    def pack(rows):
        out = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for k, t in enumerate(rows):
            out[k, : len(t)] = t
            mask[k, : len(t)] = True
        return out, mask

    hyp, hyp_mask = pack(flat_h)
    ref, ref_mask = pack(flat_r)
    bleu = segment_bleu(hyp, ref, hyp_mask, ref_mask).tolist()
    choices, k = [], 0
    for cands in candidates:
        scores = bleu[k: k + len(cands)]
        choices.append(scores.index(max(scores)))  # first (best-ranked) of the maxima
        k += len(cands)
    return choices


@register_task("seq_kd", dataclass=SeqKDConfig)
class SeqKDTask(KeepEveryExample, TranslationTask):
    @classmethod
    def setup_task(cls, cfg, **kwargs):
        check_options(cfg)  # before any dictionary or data is read
        return super().setup_task(cfg, **kwargs)

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self._store: Optional[CorpusStore] = None
        self._settings = {}
        self._expected_ids: List[int] = []
        self._remaining = 0
        self._nbest = 1

    # -- batches: shard, then skip what a killed run already logged --------------------------------------------
    def get_batch_iterator(self, dataset, *args, **kwargs):
        split = next((k for k, v in self.datasets.items() if v is dataset), None)
        if split is None or not self.cfg.kd_output_dir:
            if not self.cfg.kd_output_dir:
                raise ValueError("--task seq_kd needs --kd-output-dir DIR (where the distillation corpus goes)")
            return super().get_batch_iterator(dataset, *args, **kwargs)
        num_shards, shard_id = kwargs.pop("num_shards", 1), kwargs.pop("shard_id", 0)
        full = super().get_batch_iterator(dataset, *args, num_shards=1, shard_id=0, **kwargs)
        batches = [list(b) for b in full.frozen_batches]  # every sentence fairseq's size filter kept
        too_long, not_batched = self._left_out(dataset, batches, kwargs.get("max_positions"))
        mine = batches[shard_id::num_shards]  # deterministic: every shard computes the same batch list
        self._store = CorpusStore(self.cfg.kd_output_dir, split, self.cfg.source_lang, self.cfg.target_lang,
                                  shard_id, num_shards, self.cfg.kd_write_scores)
        identity = data_identity(self.cfg.data, split)
        self._store.check_outputs(identity["paths"])
        self._store.open_shard()
        self._expected_ids = [i for b in mine for i in b]
        todo = [b for b in mine if not set(b) <= self._store.done_ids]
        already = len(mine) - len(todo)
        if not todo and mine:
            # fairseq-generate divides by the generation time at the end: give it the last batch again (its
            # hypotheses are the same; the merge keeps one copy) rather than nothing
            todo = mine[-1:]
        self._remaining = len(todo)
        self._settings = {
            "subset": split, "num_sentences": len(dataset), "num_shards": num_shards,
            "batch_ids_digest": hash_batches(batches), "too_long_ids": too_long, "not_batched_ids": not_batched,
            "selection": str(self.cfg.kd_selection),
            **{k: v for k, v in identity.items() if k != "paths"},
        }
        logger.info(f"seq_kd: {split}, shard {shard_id} of {num_shards}: {len(mine)} batches "
                    f"({len(self._expected_ids)} sentences); {already} already in the log, "
                    f"{len(mine) - already} to generate")
        return iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=dataset.collater, batch_sampler=todo, seed=kwargs.get("seed", 1),
            num_shards=1, shard_id=0, num_workers=kwargs.get("num_workers", 0), epoch=kwargs.get("epoch", 1),
            buffer_size=kwargs.get("data_buffer_size", 0))

    @staticmethod
    def _left_out(dataset, batches, max_positions):
        """Ids in no batch: (longer than ``max_positions``, left out for another reason)."""
        batched = {int(i) for b in batches for i in b}
        absent = np.array([i for i in range(len(dataset)) if i not in batched], dtype=np.int64)
        too_long: List[int] = []
        if len(absent) and max_positions is not None:
            too_long = sorted(int(i) for i in dataset.filter_indices_by_size(absent, max_positions)[1])
        other = sorted(set(absent.tolist()) - set(too_long))
        if too_long:
            logger.warning(f"seq_kd: {len(too_long)} sentences are longer than the model accepts (max positions "
                           f"{max_positions}) and left out by --skip-invalid-size-inputs-valid-test: ids "
                           f"{too_long[:10]}{' ...' if len(too_long) > 10 else ''}")
        if other:
            logger.warning(f"seq_kd: {len(other)} sentences are in no batch although they fit the model: ids "
                           f"{other[:10]}{' ...' if len(other) > 10 else ''}")
        return too_long, other

    # -- generator: record the settings the corpus depends on ------------------------------------------------
    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        generator = super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, prefix_allowed_tokens_fn)
        self._nbest = max(1, getattr(args, "nbest", 1))
        if self.cfg.kd_selection == "seq_inter" and self._nbest < 2:
            logger.warning("seq_kd: --kd-selection seq_inter with --nbest 1 keeps the beam's best hypothesis; "
                           "pass --nbest N (≤ --beam) to choose among N")
        if self._store is not None:
            keys = ("beam", "nbest", "lenpen", "unkpen", "max_len_a", "max_len_b", "min_len", "sampling",
                    "sampling_topk", "sampling_topp", "temperature", "no_repeat_ngram_size", "match_source_len",
                    "diverse_beam_groups", "prefix_size")
            settings = dict(self._settings, **{k: getattr(args, k, None) for k in keys})
            settings["teacher_sha256"] = weights_sha256(models)
            self._store.check_settings(settings)
            if self._remaining == 0:
                self._store.finish_shard(self._expected_ids)
        return generator

    # -- every batch: keep the chosen hypotheses, durable before the next batch ------------------------------
    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        hypos = super().inference_step(generator, models, sample, prefix_tokens=prefix_tokens,
                                       constraints=constraints)
        if self._store is not None:
            self._record(sample, hypos)
        return hypos

    def _record(self, sample, hypos):
        pad, eos = self.tgt_dict.pad(), self.tgt_dict.eos()
        ids = sample["id"].tolist()
        candidates = [[h["tokens"].cpu() for h in hypos[i][: self._nbest]] for i in range(len(ids))]
        if self.cfg.kd_selection == "seq_inter" and self._nbest > 1:
            if sample.get("target") is None:
                raise ValueError("--kd-selection seq_inter needs the references of --gen-subset (its target side)")
            refs = [utils.strip_pad(t, pad).cpu() for t in sample["target"]]
            strip = lambda t: t[t.ne(eos)]  # noqa: E731  (BLEU on words, not on </s>)
            choice = select_seq_inter([[strip(h) for h in c] for c in candidates], [strip(r) for r in refs], pad)
        else:
            choice = [0] * len(ids)
        records = []
        for i, sid in enumerate(ids):
            src = utils.strip_pad(sample["net_input"]["src_tokens"][i], self.src_dict.pad())
            hypo = hypos[i][choice[i]]
            records.append({
                "id": sid,
                "src": self.src_dict.string(src.cpu()),
                "hyp": self.tgt_dict.string(hypo["tokens"].int().cpu(),
                                            extra_symbols_to_ignore={self.tgt_dict.bos()}),
                "score": float(hypo["score"]) / math.log(2),  # as on the H- line
                "rank": choice[i],
            })
        self._store.append_batch(records)
        self._remaining -= 1
        if self._remaining == 0:
            self._store.finish_shard(self._expected_ids)


def hash_batches(batches) -> str:
    import hashlib

    h = hashlib.sha1()
    for b in batches:
        h.update((",".join(map(str, b)) + ";").encode())
    return h.hexdigest()[:16]


def data_identity(data: str, split: str) -> dict:
    """What a subset's corpus is made from: the data folder(s) (absolute), the subset's binarized files
    (``<split>.<src>-<tgt>.<lang>[.bin|.idx]``) and dictionaries (``dict.*.txt``), and a SHA-256 over their
    names and contents; ``paths`` lists the files (the task's inputs, for the writer rule)."""
    pattern = re.compile(rf"^{re.escape(split)}\.[^.]+-[^.]+\.[^.]+(\.bin|\.idx)?$|^dict\.[^.]+\.txt$")
    folders = [os.path.abspath(d) for d in utils.split_paths(data)]
    paths = []
    for folder in folders:
        if os.path.isdir(folder):
            paths += [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if pattern.match(n)
                      and os.path.isfile(os.path.join(folder, n))]
    h = hashlib.sha256()
    for path in paths:
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return {"data": folders, "data_files": [os.path.basename(p) for p in paths], "data_sha256": h.hexdigest(),
            "paths": paths}


def weights_sha256(models) -> str:
    """SHA-256 of every tensor of the models' state dicts: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    with torch.no_grad():
        for m in models:
            for name, t in m.state_dict().items():
                t = t.detach().cpu().contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
