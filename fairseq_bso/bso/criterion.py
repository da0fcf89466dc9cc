"""``--criterion bso``: Beam Search Optimization (Wiseman and Rush, EMNLP 2016).

The training search and the loss live in :mod:`fairseq_bso.bso.search`;
this module is the fairseq glue: options, the beam-size curriculum, metrics.

Loss scale.  The loss is summed over violations and sentences of the batch, and
``sample_size`` is the number of sentences, so fairseq's update uses the mean
over sentences (fairseq divides gradients by ``sample_size``).  The paper sums
over a batch of 64; with Adagrad or Adam the scale does not change the step (see
Optimizer); with SGD multiply the paper's learning rate by the batch size.

Optimizer.  The authors trained BSO with Adagrad and zeroed its accumulators whenever K
grew (``bso_train.lua``); ``--optimizer adagrad --bso-curriculum-reset-optimizer`` does the
same (with any optimizer, its state is reset before the first update with the larger K).
Adagrad's step is invariant to the scale of the gradient, so the paper's summed loss and
this criterion's mean over sentences need the same learning rate (the authors' default is
0.01); with plain SGD multiply the paper's learning rate by the batch size.

Curriculum.  The training beam K grows from ``--bso-curriculum-start`` by one
every ``--bso-curriculum-epochs`` epochs up to ``--bso-beam-size``.  K is derived
from the epoch number alone (``task.begin_epoch`` tells the criterion), so a run
resumed from ``checkpoint_last.pt`` continues with the right K.  The epoch is also kept
in the task's checkpointed state (``task_state["bso_epoch"]``), so that ``fairseq-validate``
(which never begins an epoch) validates a checkpoint at the K it trained with.

Distributed training.  The encoder, the search and the re-scoring run inside *one call of
the model passed in* (:func:`routed_forward`: the innermost model's ``forward`` is routed to
them for that call), so fairseq's DDP wrapper sees the forward it wraps:
``--ddp-backend pytorch_ddp``/``c10d`` arms its gradient reducer (with or without
``--find-unused-parameters``), ``legacy_ddp``/``no_c10d`` all-reduce after backward as for
any criterion.  Other wrappers (``fully_sharded``, ``slowmo``) are refused at the first batch
with an error naming the backends to use.

Host reads.  A training forward reads tensors back to the host a fixed number of times,
whatever the target length (the violation index, the segment positions with the
``log_softmax`` score, the non-finite guard, and the model's own: the LSTM encoder's lengths,
the Transformer's padding checks); the logged counts stay tensors until fairseq reduces them.
"""

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from fairseq.logging import metrics
from torch.profiler import record_function
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import FairseqDecoder, FairseqIncrementalDecoder

from .costs import COSTS
from .search import DROPOUT, GOLD_KTH, SCORES, bso_loss, bso_search, decoder_dropout, nll_loss, rescore
from ..fairseq_fixes import nonfinite

logger = logging.getLogger(__name__)

MARGIN = 1.0


@dataclass
class BSOConfig(FairseqDataclass):
    bso_beam_size: int = field(default=6, metadata={"help": "training beam size K_tr (the gold must stay in the top K-1)"})
    bso_cost: ChoiceEnum(list(COSTS)) = field(  # type: ignore
        default="zero_one",
        metadata={"help": "Δ: zero_one (1 per violation) or sentence_bleu (1 - smoothed BLEU of the violating segment)"},
    )
    bso_curriculum_start: int = field(
        default=2, metadata={"help": "beam size of the first epoch (curriculum); set to --bso-beam-size to disable"})
    bso_curriculum_epochs: int = field(
        default=2, metadata={"help": "epochs per beam size in the curriculum (K grows by 1 after each block)"})
    bso_score: ChoiceEnum(list(SCORES)) = field(  # type: ignore
        default="log_softmax",
        metadata={"help": "score f ranking the beam: logit (the paper: the last step's raw logit; decode with "
                          "--bso-decoding) or log_softmax (the prefix's summed log-probability; decode with "
                          "fairseq's standard beam)"})
    bso_nll_weight: float = field(
        default=0.0, metadata={"help": "λ of a token-level NLL term added to the BSO loss: loss = BSO + λ·NLL "
                                       "(summed over the batch's gold tokens)"})
    bso_gold_kth: ChoiceEnum(list(GOLD_KTH)) = field(  # type: ignore
        default="previous",
        metadata={"help": "when the gold is exactly the K-th item: self (the paper: the gold is its own rival, "
                          "a zero-gradient violation and a reset) or previous (the rival is the (K-1)-th item)"})
    bso_dropout: ChoiceEnum(list(DROPOUT)) = field(  # type: ignore
        default="off",
        metadata={"help": "decoder dropout in the BSO passes: off (the decoder runs without dropout in the search "
                          "and the re-scoring) or shared (the model's dropout, with masks the two passes share; "
                          "LSTM decoders)"})
    bso_curriculum_reset_optimizer: bool = field(
        default=False,
        metadata={"help": "reset the optimizer's state (Adagrad's accumulators, Adam's moments) when the "
                          "curriculum grows K, as the authors' code does for Adagrad"})
    bso_learn_to_stop: bool = field(
        default=False,
        metadata={"help": "learning to stop (after Ma et al. 2019): a hypothesis ending in </s> before the gold "
                          "ends leaves the training beam, and it is a violation when its score comes within the "
                          "margin of the gold's final score (see fairseq_bso.bso.search)"})
    bso_lenpen: float = field(
        default=1.0,
        metadata={"help": "with --bso-learn-to-stop and --bso-score log_softmax: finished hypotheses are compared "
                          "as fairseq's beam ranks them, summed log-probability / length^lenpen; set it to the "
                          "--lenpen you decode with (fairseq's default 1)"})


def reset_optimizer_state(optimizer) -> None:
    """Fresh optimizer state for every parameter: Adagrad's accumulators back to their initial
    value (torch's Adagrad creates them eagerly), any other optimizer's state dropped (fairseq's
    Adam and most torch optimizers create it lazily at their next step)."""
    opt = getattr(optimizer, "optimizer", optimizer)  # fairseq's wrapper holds the torch optimizer
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p)
            if not state:
                continue
            if isinstance(opt, torch.optim.Adagrad):
                state["sum"].fill_(group.get("initial_accumulator_value", 0.0))
                if torch.is_tensor(state.get("step")):
                    state["step"].zero_()
                else:
                    state["step"] = 0
            else:
                del opt.state[p]


#: Wrappers whose forward calls the wrapped module's: the criterion routes the innermost model's forward.
PASS_THROUGH = ("ModuleProxyWrapper", "DistributedDataParallel", "LegacyDistributedDataParallel",
                "DistributedTimeoutWrapper")


def unwrap(model):
    """The model inside fairseq's distributed wrappers; refuses wrappers the criterion was not made for."""
    inner = model
    while type(inner).__name__ in PASS_THROUGH:
        inner = inner.module
    if type(inner).__name__ in ("FullyShardedDataParallel", "SlowMoDistributedDataParallel",
                                "TPUDistributedDataParallel"):
        raise ValueError(f"--criterion bso does not support this --ddp-backend ({type(inner).__name__}): "
                         f"use --ddp-backend pytorch_ddp (c10d) or legacy_ddp (no_c10d)")
    return inner


@contextmanager
def routed_forward(inner, fn):
    """``inner``'s forward is ``fn`` for the duration (so that calling the outermost wrapper runs
    ``fn`` through every wrapper's forward: DDP's reducer sees the call)."""
    inner.forward = fn
    try:
        yield
    finally:
        del inner.forward  # the class's forward again


def curriculum_beam_size(epoch: int, start: int, epochs_per_size: int, final: int) -> int:
    """K for a (1-based) epoch: start, start+1 every ``epochs_per_size`` epochs, capped at ``final``."""
    return min(final, start + max(epoch - 1, 0) // epochs_per_size)


@register_criterion("bso", dataclass=BSOConfig)
class BSOCriterion(FairseqCriterion):
    def __init__(self, task, bso_beam_size=6, bso_cost="zero_one", bso_curriculum_start=2, bso_curriculum_epochs=2,
                 bso_score="log_softmax", bso_nll_weight=0.0, bso_gold_kth="previous", bso_learn_to_stop=False,
                 bso_dropout="off", bso_curriculum_reset_optimizer=False, bso_lenpen=1.0):
        super().__init__(task)
        tgt_dict = task.target_dictionary
        if bso_beam_size < 2:
            raise ValueError(f"--bso-beam-size must be >= 2 (the gold must beat the K-th item), got {bso_beam_size}")
        if bso_beam_size > len(tgt_dict):
            raise ValueError(
                f"--bso-beam-size {bso_beam_size} is larger than the target vocabulary ({len(tgt_dict)} types)")
        if not 2 <= bso_curriculum_start <= bso_beam_size:
            raise ValueError(
                f"--bso-curriculum-start must be in [2, --bso-beam-size={bso_beam_size}], got {bso_curriculum_start}")
        if bso_curriculum_epochs < 1:
            raise ValueError(f"--bso-curriculum-epochs must be >= 1, got {bso_curriculum_epochs}")
        if str(bso_cost) not in COSTS:
            raise ValueError(f"--bso-cost must be one of {sorted(COSTS)}, got {bso_cost}")
        if str(bso_score) not in SCORES:
            raise ValueError(f"--bso-score must be one of {list(SCORES)}, got {bso_score}")
        if str(bso_gold_kth) not in GOLD_KTH:
            raise ValueError(f"--bso-gold-kth must be one of {list(GOLD_KTH)}, got {bso_gold_kth}")
        if not (math.isfinite(bso_nll_weight) and bso_nll_weight >= 0):
            raise ValueError(f"--bso-nll-weight must be >= 0, got {bso_nll_weight} (a finite number)")
        if not math.isfinite(bso_lenpen):
            raise ValueError(f"--bso-lenpen must be a finite number, got {bso_lenpen}")
        self.lenpen = float(bso_lenpen)
        self.score = str(bso_score)
        self.nll_weight = float(bso_nll_weight)
        self.gold_kth = str(bso_gold_kth)
        self.stop = bool(bso_learn_to_stop)
        if str(bso_dropout) not in DROPOUT:
            raise ValueError(f"--bso-dropout must be one of {list(DROPOUT)}, got {bso_dropout}")
        self.dropout = str(bso_dropout)
        self.reset_optimizer_on_growth = bool(bso_curriculum_reset_optimizer)
        self._reset_pending = False
        self.final_beam_size = bso_beam_size
        self.curriculum_start = bso_curriculum_start
        self.curriculum_epochs = bso_curriculum_epochs
        self.cost_name = str(bso_cost)
        self.cost = COSTS[self.cost_name]
        self.pad, self.eos, self.bos = tgt_dict.pad(), tgt_dict.eos(), tgt_dict.bos()
        saved = getattr(getattr(task, "state", None), "state_dict", None)
        self.epoch = int(saved.get("bso_epoch", 1)) if isinstance(saved, dict) else 1  # a loaded checkpoint's
        self._checked_model = False
        self._hook_epochs(task)

    def _hook_epochs(self, task):
        """fairseq tells tasks, not criterions, when an epoch begins (also epoch 1 and
        after a resume); forward the epoch so that the curriculum follows it."""
        begin_epoch = task.begin_epoch

        def begin_epoch_and_set_beam(epoch, model):
            self.check_model(model)
            self.set_epoch(epoch)
            return begin_epoch(epoch, model)

        task.begin_epoch = begin_epoch_and_set_beam
        if not self.reset_optimizer_on_growth:
            return
        optimizer_step = task.optimizer_step

        def optimizer_step_after_reset(optimizer, model, update_num):
            if self._reset_pending:
                reset_optimizer_state(optimizer)
                self._reset_pending = False
                logger.info(f"BSO epoch {self.epoch}: K grew to {self.beam_size}, optimizer state reset "
                            f"(--bso-curriculum-reset-optimizer)")
            return optimizer_step(optimizer, model, update_num)

        task.optimizer_step = optimizer_step_after_reset

    def set_epoch(self, epoch: int) -> None:
        old = self.beam_size
        self.epoch = epoch
        state = getattr(self.task, "state", None)
        if state is not None and hasattr(state, "merge_state_dict"):  # saved in checkpoints' task_state
            state.merge_state_dict({"bso_epoch": int(epoch)})
        # K grows in this epoch (derived from the epoch number, so a resumed run agrees)
        previous = curriculum_beam_size(epoch - 1, self.curriculum_start, self.curriculum_epochs, self.final_beam_size)
        if self.reset_optimizer_on_growth and epoch > 1 and self.beam_size > previous:
            self._reset_pending = True
        if self.beam_size != old or epoch == 1:
            logger.info(f"BSO epoch {epoch}: training beam size K = {self.beam_size}")

    @property
    def beam_size(self) -> int:
        return curriculum_beam_size(self.epoch, self.curriculum_start, self.curriculum_epochs, self.final_beam_size)

    def check_model(self, model) -> None:
        if self._checked_model:
            return
        decoder = getattr(model, "decoder", None)
        if not isinstance(decoder, FairseqIncrementalDecoder):
            raise ValueError(
                f"--criterion bso needs an encoder-decoder model with an incremental decoder "
                f"(fairseq's LSTM or Transformer); {type(model).__name__} has {type(decoder).__name__}")
        if type(decoder).extract_features in (FairseqDecoder.extract_features,
                                              FairseqIncrementalDecoder.extract_features):
            raise ValueError(
                f"--criterion bso re-scores paths with the decoder's extract_features (teacher-forced features, then "
                f"the output layer); {type(decoder).__name__} does not implement it (fairseq's fconv and "
                f"lightconv decoders do not): use an LSTM or Transformer decoder")
        if self.dropout == "shared":
            from .search import SharedDropout
            SharedDropout(decoder, 1)  # refuses a decoder it does not support, naming the option
        self._checked_model = True

    def forward(self, model, sample, reduce=True):
        inner = unwrap(model)
        self.check_model(inner)
        net_input = sample["net_input"]
        target = sample["target"]
        # one call of the (wrapped) model: DDP arms its reducer around the passes
        with routed_forward(inner, lambda src_tokens, src_lengths, target: self.passes(inner, src_tokens, src_lengths,
                                                                                       target)):
            result, scored = model(net_input["src_tokens"], net_input["src_lengths"], target)
        margin_loss = bso_loss(scored.gold, scored.violating, result, MARGIN)
        loss = margin_loss
        nll = None
        if self.nll_weight > 0:  # the NLL term (Edunov et al. 2018 mix token and sequence losses)
            nll = nll_loss(scored.gold_lprobs, target, self.pad)
            loss = margin_loss + self.nll_weight * nll

        nsentences = target.size(0)
        logging_output = {  # counts stay tensors (no host read here): fairseq reduces them
            "loss": loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": nsentences,
            "sample_size": nsentences,
            "bso_violations": result.violation.sum(),
            "bso_resets": result.reset.sum(),
            "bso_delta": result.delta.sum(),
            "bso_gold_on_beam": (~result.reset.any(1)).sum(),
            "bso_beam": self.beam_size * nsentences,
            "bso_margin_loss": margin_loss.data,
        }
        if self.stop:  # violations whose rival is a finished (shorter) hypothesis
            steps = torch.arange(target.size(1), device=target.device)
            logging_output["bso_finished_rivals"] = (result.violation & (result.gold_step > steps)).sum()
        if nll is not None:
            logging_output["bso_nll"] = nll.data
        return nonfinite.guard(loss, nsentences, logging_output, model, sample)

    def passes(self, model, src_tokens, src_lengths, target):
        """The encoder, Algorithm 1's search (without autograd) and the re-scoring of the gold and
        violating paths (under autograd): (SearchResult, Rescored)."""
        encoder_out = model.encoder(src_tokens, src_lengths=src_lengths)
        constraint = getattr(self.task, "training_constraint", None)
        # in training the decoder's dropout is off or shared by both passes; in validation it is off
        dropout = self.dropout if model.training else "off"
        with decoder_dropout(model.decoder, dropout, target.size(0)) as shared:
            with record_function("bso.search"):
                result = bso_search(model, encoder_out, target, self.beam_size, self.pad, self.eos, self.bos,
                                    self.cost, score=self.score, gold_kth=self.gold_kth, margin=MARGIN,
                                    stop=self.stop, lenpen=self.lenpen, dropout=shared, constraint=constraint,
                                    src_tokens=src_tokens)
            with record_function("bso.rescore"):
                scored = rescore(model, encoder_out, target, result, self.pad, self.eos, nll=self.nll_weight > 0,
                                 dropout=shared)
        return result, scored

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        def at_least_one(x):  # a tensor stays a tensor (no host read)
            return x.clamp(min=1) if torch.is_tensor(x) else max(x, 1)

        loss, sample_size, nsentences = total("loss"), total("sample_size"), total("nsentences")
        violations = total("bso_violations")
        metrics.log_scalar("loss", loss / max(sample_size, 1), sample_size, round=3)
        metrics.log_scalar("violations", violations / max(nsentences, 1), nsentences, round=3)
        metrics.log_scalar("resets", total("bso_resets") / max(nsentences, 1), nsentences, round=3)
        metrics.log_scalar("delta", total("bso_delta") / at_least_one(violations), at_least_one(violations), round=3)
        metrics.log_scalar("gold_on_beam", total("bso_gold_on_beam") / max(nsentences, 1), nsentences, round=3)
        metrics.log_scalar("bso_beam", total("bso_beam") / max(nsentences, 1), nsentences, round=2)
        metrics.log_scalar("margin_loss", total("bso_margin_loss") / max(nsentences, 1), nsentences, round=3)
        if any("bso_finished_rivals" in log for log in logging_outputs):
            metrics.log_scalar("finished_rivals", total("bso_finished_rivals") / max(nsentences, 1), nsentences,
                               round=3)
        if any("bso_nll" in log for log in logging_outputs):
            ntokens = total("ntokens")
            metrics.log_scalar("nll_loss", total("bso_nll") / max(ntokens, 1) / math.log(2), ntokens, round=3)
        nonfinite.log_skipped(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
