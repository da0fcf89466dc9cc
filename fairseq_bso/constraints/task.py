"""``--task constrained_beam_training``: fairseq's translation task plus output
constraints in the BSO training search and in ``fairseq-generate`` (ConBSO),
and BSO-consistent decoding, and a lean greedy decoder for distilled students
(``--lean-greedy``, ``fairseq_bso.distill.greedy``).

With ``--constraint none`` (the default) and without ``--bso-decoding`` it behaves
exactly like ``--task translation``.

The task also hosts the magnitude-pruning callback (``--prune-*``, see
``fairseq_bso.prune.masks``).  fairseq has no callback system; the trainer calls
``task.optimizer_step`` for every update (after gradient clipping) on every
worker, so masking the gradients there and re-masking the weights right after
the step keeps masks exact with any optimizer, criterion (``bso``, ``word_kd``,
``cross_entropy``) and under distributed training, without touching the
trainer or the model's parameter names.
"""

import logging
from dataclasses import dataclass, field

import numpy as np
from fairseq.data import BaseWrapperDataset
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ..fairseq_fixes.batching import KeepEveryExample
from .base import build_constraint
from ..bso.decoding import ConstrainedSequenceGenerator
from ..distill.greedy import GreedyGenerator, check_generation_options
from ..prune.masks import Pruner, PruningConfig, check_options

logger = logging.getLogger(__name__)


@dataclass
class ConstrainedBeamTrainingConfig(TranslationConfig, PruningConfig):
    constraint: str = field(
        default="none",
        metadata={"help": "output constraint in training search and generation: none, word_order, arc_standard, "
                          "or a name registered with fairseq_bso.constraints.register_constraint"})
    constraint_bad_target: ChoiceEnum(["refuse", "skip"]) = field(  # type: ignore
        default="refuse",
        metadata={"help": "a gold target that violates the constraint: refuse the data (error naming the example) "
                          "or skip it (counted in the log)"})
    bso_decoding: bool = field(
        default=False,
        metadata={"help": "generate with BSO scores: rank by raw logits, a finished hypothesis scores f(</s>), "
                          "no length normalization (for models trained with --criterion bso)"})
    lean_greedy: bool = field(
        default=False,
        metadata={"help": "with --beam 1: decode with fairseq_bso.distill.greedy.GreedyGenerator, the same hypotheses as "
                          "fairseq's generator at beam 1 without its beam bookkeeping (faster at small batches; "
                          "for distilled students decoded greedily)"})


class SkipExamples(BaseWrapperDataset):
    """A dataset without some examples: batches never contain them."""

    def __init__(self, dataset, skipped):
        super().__init__(dataset)
        self.skipped = np.asarray(sorted(skipped), dtype=np.int64)

    def ordered_indices(self):
        indices = self.dataset.ordered_indices()
        return indices[~np.isin(indices, self.skipped)]


@register_task("constrained_beam_training", dataclass=ConstrainedBeamTrainingConfig)
class ConstrainedBeamTrainingTask(KeepEveryExample, TranslationTask):
    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.training_constraint = build_constraint(cfg.constraint, src_dict, tgt_dict)
        check_options(cfg)  # bad --prune-* options fail before any data is read
        self.pruner = None

    def build_model(self, cfg, *args, **kwargs):
        model = super().build_model(cfg, *args, **kwargs)
        if self.cfg.prune_ratio > 0:
            self.pruner = Pruner(self.cfg, model)
        return model

    def optimizer_step(self, optimizer, model, update_num):
        if self.pruner is None:
            return super().optimizer_step(optimizer, model, update_num)
        self.pruner.before_step(update_num)  # prune when the schedule says so; mask the gradients
        super().optimizer_step(optimizer, model, update_num)
        self.pruner.after_step()  # re-mask the weights: no optimizer state revives a pruned weight

    def get_batch_iterator(self, dataset, *args, **kwargs):
        """fairseq-fixed 0.12.3 builds the batches with the numpy seed ``seed + epoch``, ``epoch`` being the
        epoch in which the (cached, reused) iterator is created: 1 in an uninterrupted run, the resume epoch
        after a restart.  A run resumed in epoch >= 2 would then train on other batches than the uninterrupted
        run, and a mid-epoch resume would skip the first batches of the *other* batching (some examples seen
        twice in that epoch, some never).  Build the batches of epoch 1, as the uninterrupted run does."""
        epoch = kwargs.get("epoch", 1)
        cached_across_epochs = (
            self.can_reuse_epoch_itr(dataset) and not kwargs.get("disable_iterator_cache", False)
            and not kwargs.get("update_epoch_batch_itr", False) and not getattr(self.cfg, "rebuild_batches", False))
        if epoch <= 1 or not cached_across_epochs or dataset in self.dataset_to_epoch_iter:
            return super().get_batch_iterator(dataset, *args, **kwargs)
        iterator = super().get_batch_iterator(dataset, *args, **{**kwargs, "epoch": 1})
        iterator.epoch = epoch  # the epoch it starts in (a resume then loads the position within it)
        dataset.set_epoch(epoch)
        return iterator

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if self.training_constraint is not None:
            self.datasets[split] = self._check_targets(split, self.datasets[split])

    def _check_targets(self, split, dataset):
        if dataset.tgt is None:
            return dataset
        bad = []
        for i in range(len(dataset)):
            why = self.training_constraint.check(dataset.src[i], dataset.tgt[i])
            if why is not None:
                bad.append((i, why))
        if not bad:
            return dataset
        where = "; ".join(f"example {i} (line {i + 1} of the {split} text): {why}" for i, why in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        if self.cfg.constraint_bad_target == "refuse":
            raise ValueError(f"{len(bad)} of {len(dataset)} {split} targets violate --constraint "
                             f"{self.cfg.constraint}: {where}{more}. Fix the data or pass "
                             f"--constraint-bad-target skip")
        logger.warning(f"skipping {len(bad)} of {len(dataset)} {split} examples that violate --constraint "
                       f"{self.cfg.constraint}: {where}{more}")
        return SkipExamples(dataset, [i for i, _ in bad])

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        if self.cfg.lean_greedy:
            if self.training_constraint is not None or self.cfg.bso_decoding or prefix_allowed_tokens_fn is not None:
                raise ValueError("--lean-greedy decodes with fairseq's standard scores: it cannot be combined with "
                                 "--constraint, --bso-decoding or prefix_allowed_tokens_fn")
            check_generation_options(args)
            return super().build_generator(models, args, seq_gen_cls=GreedyGenerator,
                                           extra_gen_cls_kwargs=extra_gen_cls_kwargs)
        if self.training_constraint is None and not self.cfg.bso_decoding:
            return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, prefix_allowed_tokens_fn)
        if prefix_allowed_tokens_fn is not None:
            raise ValueError("prefix_allowed_tokens_fn cannot be combined with --constraint / --bso-decoding")
        extra = dict(extra_gen_cls_kwargs or {})
        extra.update(constraint=self.training_constraint, raw_scores=self.cfg.bso_decoding)
        return super().build_generator(models, args, seq_gen_cls=ConstrainedSequenceGenerator,
                                       extra_gen_cls_kwargs=extra)
