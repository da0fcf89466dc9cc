"""``--criterion word_kd``: word-level knowledge distillation (Kim and Rush, EMNLP 2016).

    L = (1 − α) · NLL + α · ( − Σ_j Σ_v q(v | s, y_<j) · log p(v | s, y_<j) )

with q the teacher's distribution at every gold prefix (temperature 1),
optionally truncated to its top k tokens and renormalized (``--kd-topk``), and
optional label smoothing on the NLL part (``--kd-label-smoothing``).

The teacher is loaded from ``--kd-teacher-path`` and kept *outside* the trained
model (not a submodule: no gradients, not in the optimizer, not in checkpoints),
in eval mode, under ``no_grad``, on the student's device and in the dtype of the
student's parameters (float16 under ``--fp16`` / ``--memory-efficient-fp16``;
float32 under ``--amp``, where fairseq's autocast covers the teacher's forward as
the student's).  q and the distillation term are then computed in float32 (as
fairseq computes the student's log-probabilities).  With ``--kd-topk k`` only the
teacher's top k logits per position are kept (B·T·k values and their indices; no
B·T·V teacher distribution is built) and the term is Σ over those k tokens of
q · log p, p gathered at them.  Under fairseq's distributed training each worker
holds its own teacher copy and scores its own batches.
"""

import logging
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics

from ..fairseq_fixes import nonfinite

logger = logging.getLogger(__name__)


@dataclass
class WordKDConfig(FairseqDataclass):
    kd_teacher_path: str = field(default="", metadata={"help": "teacher checkpoint (same dictionaries as the student)"})
    kd_alpha: float = field(default=0.5, metadata={"help": "weight of the distillation term, in [0, 1]"})
    kd_topk: int = field(default=0, metadata={"help": "keep the teacher's top k tokens, renormalized (0: all)"})
    kd_label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the NLL part, in [0, 1)"})


def load_teacher(path: str, task):
    """The teacher model, checked against the student's dictionaries."""
    from fairseq import checkpoint_utils

    if not path:
        raise ValueError("--criterion word_kd needs --kd-teacher-path CHECKPOINT")
    if not os.path.isfile(path):  # fairseq would say "OSError: Model file not found: PATH"
        raise ValueError(f"--kd-teacher-path {path}: no such checkpoint")
    try:
        models, _, teacher_task = checkpoint_utils.load_model_ensemble_and_task([path])
    except FileNotFoundError as e:
        # fairseq reads a model's dictionaries from the data directory recorded in its checkpoint (often a
        # relative path): gone, or elsewhere from here.  Take the student's, as fairseq-generate takes DATA's.
        logger.warning(f"--kd-teacher-path {path}: cannot read the teacher's dictionaries from the data directory "
                       f"it was trained on ({e}); using the student's ({task.cfg.data}), which it must share")
        try:
            models, _, teacher_task = checkpoint_utils.load_model_ensemble_and_task(
                [path], arg_overrides={"data": task.cfg.data})
        except RuntimeError as e:
            if "size mismatch" not in str(e):
                raise
            why = str(e).splitlines()[-1].strip()
            raise ValueError(f"--kd-teacher-path {path}: the teacher's embeddings do not fit the student's "
                             f"dictionaries, the teacher was trained with other ones ({why})") from e
    for side in ("source_dictionary", "target_dictionary"):
        mine, theirs = getattr(task, side, None), getattr(teacher_task, side, None)
        if mine is not None and theirs is not None and list(mine.symbols) != list(theirs.symbols):
            raise ValueError(
                f"--kd-teacher-path {path}: the teacher's {side.split('_')[0]} dictionary ({len(theirs)} types) "
                f"differs from the student's ({len(mine)} types); binarize the student's data with the "
                f"teacher's dictionaries (fairseq-preprocess --srcdict/--tgtdict)")
    teacher = models[0]
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def teacher_distribution(teacher_logits: torch.Tensor, topk: int) -> torch.Tensor:
    """q over the whole vocabulary (B·T·V): softmax of the teacher's logits in float32, optionally truncated to the
    top k and renormalized.  The criterion uses it without ``--kd-topk``; with it, :func:`teacher_topk`."""
    if topk > 0 and topk < teacher_logits.size(-1):
        q, indices = teacher_topk(teacher_logits, topk)
        return torch.zeros(teacher_logits.shape, dtype=q.dtype, device=q.device).scatter_(-1, indices, q)
    return F.softmax(teacher_logits.float(), dim=-1)


def teacher_topk(teacher_logits: torch.Tensor, topk: int):
    """(q, indices), both B·T·k: the teacher's top k tokens per position and their renormalized probabilities
    (float32).  Ties among the logits are broken as ``torch.topk`` breaks them."""
    values, indices = teacher_logits.topk(topk, dim=-1)
    return F.softmax(values.float(), dim=-1), indices


def distillation_term(teacher_logits: torch.Tensor, lprobs: torch.Tensor, topk: int,
                      pad_mask: torch.Tensor) -> torch.Tensor:
    """− Σ_positions Σ_v q(v) · log p(v), over the non-pad positions, in float32.  ``lprobs``: the student's
    log-probabilities (B·T·V); ``teacher_logits``: B·T·V in the teacher's dtype."""
    if 0 < topk < teacher_logits.size(-1):
        q, indices = teacher_topk(teacher_logits, topk)
        per_position = (q * lprobs.gather(-1, indices).float()).sum(-1)
    else:
        per_position = (teacher_distribution(teacher_logits, 0) * lprobs.float()).sum(-1)
    return -per_position.masked_fill(pad_mask, 0.0).sum()


@register_criterion("word_kd", dataclass=WordKDConfig)
class WordKDCriterion(FairseqCriterion):
    def __init__(self, task, kd_teacher_path="", kd_alpha=0.5, kd_topk=0, kd_label_smoothing=0.0):
        super().__init__(task)
        if not math.isfinite(kd_alpha) or not 0.0 <= kd_alpha <= 1.0:
            raise ValueError(f"--kd-alpha must be a number in [0, 1], got {kd_alpha}")
        if kd_topk < 0:
            raise ValueError(f"--kd-topk must be >= 0, got {kd_topk}")
        if not 0.0 <= kd_label_smoothing < 1.0:
            raise ValueError(f"--kd-label-smoothing must be in [0, 1), got {kd_label_smoothing}")
        self.alpha = kd_alpha
        self.topk = kd_topk
        self.eps = kd_label_smoothing
        # a plain list, not a submodule: the teacher is not trained, optimized or saved
        self._teacher = [load_teacher(kd_teacher_path, task)]

    def teacher(self, student):
        """The teacher on the student's device, in the dtype of the student's parameters."""
        teacher = self._teacher[0]
        p, s = next(teacher.parameters()), next(student.parameters())
        if p.device != s.device or p.dtype != s.dtype:
            teacher.to(device=s.device, dtype=s.dtype)
        teacher.eval()
        return teacher

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        target = model.get_targets(sample, net_output)
        pad_mask = target.eq(self.padding_idx)
        nll_part, nll_loss = label_smoothed_nll_loss(lprobs.view(-1, lprobs.size(-1)), target.view(-1), self.eps,
                                                     ignore_index=self.padding_idx, reduce=True)
        if self.alpha > 0:
            with torch.no_grad():
                teacher_logits = self.teacher(model)(**sample["net_input"])[0]
            kd = distillation_term(teacher_logits, lprobs, self.topk, pad_mask)
        else:
            kd = lprobs.new_zeros(())
        loss = (1.0 - self.alpha) * nll_part + self.alpha * kd
        sample_size = sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "kd_loss": kd.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        return nonfinite.guard(loss, sample_size, logging_output, model, sample)

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        import math

        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size, ntokens = total("sample_size"), total("ntokens")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1) / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / max(ntokens, 1) / math.log(2), ntokens, round=3)
        metrics.log_scalar("kd_loss", total("kd_loss") / max(ntokens, 1) / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        nonfinite.log_skipped(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
