"""``--task constrained_beam_training``: fairseq's translation task plus output
constraints in the BSO training search and in ``fairseq-generate`` (ConBSO),
and BSO-consistent decoding (``--bso-decoding``).

With ``--constraint none`` (the default) and without ``--bso-decoding`` it behaves
exactly like ``--task translation`` with the pieces every plugin task shares:
the batching fixes (``fairseq_bso.fairseq_fixes.batching``: every example kept,
a resumed run on the uninterrupted run's batches) and ``--lean-greedy``
(``fairseq_bso.distill.lean_greedy_task``).  It also still accepts the
``--prune-*`` options (``fairseq_bso.prune.tasks.PruningTask``), so command lines
and checkpoints from before pruning had a task of its own keep working; new runs
prune with ``--task translation_pruned`` (or any task's pruned twin).
"""

import logging
from dataclasses import dataclass, field

import numpy as np
from fairseq.data import BaseWrapperDataset
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ..bso.decoding import ConstrainedSequenceGenerator
from ..distill.lean_greedy_task import LeanGreedy, LeanGreedyConfig
from ..fairseq_fixes.batching import PluginBatching
from ..prune.masks import PruningConfig
from ..prune.tasks import PruningTask
from .base import build_constraint

logger = logging.getLogger(__name__)


@dataclass
class ConstrainedBeamTrainingConfig(TranslationConfig, PruningConfig, LeanGreedyConfig):
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


class SkipExamples(BaseWrapperDataset):
    """A dataset without some examples: batches never contain them."""

    def __init__(self, dataset, skipped):
        super().__init__(dataset)
        self.skipped = np.asarray(sorted(skipped), dtype=np.int64)

    def ordered_indices(self):
        indices = self.dataset.ordered_indices()
        return indices[~np.isin(indices, self.skipped)]


@register_task("constrained_beam_training", dataclass=ConstrainedBeamTrainingConfig)
class ConstrainedBeamTrainingTask(PruningTask, LeanGreedy, PluginBatching, TranslationTask):
    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.training_constraint = build_constraint(cfg.constraint, src_dict, tgt_dict)

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
            return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs)  # LeanGreedy's
        if self.training_constraint is None and not self.cfg.bso_decoding:
            return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, prefix_allowed_tokens_fn)
        if prefix_allowed_tokens_fn is not None:
            raise ValueError("prefix_allowed_tokens_fn cannot be combined with --constraint / --bso-decoding")
        extra = dict(extra_gen_cls_kwargs or {})
        extra.update(constraint=self.training_constraint, raw_scores=self.cfg.bso_decoding)
        return super().build_generator(models, args, seq_gen_cls=ConstrainedSequenceGenerator,
                                       extra_gen_cls_kwargs=extra)
