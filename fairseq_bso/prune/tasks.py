"""Pruning for any fairseq task: a task mixin and a one-line factory that registers a pruned twin of a task.

fairseq has no training callbacks; its trainer calls the task for every update (``train_step`` for each
micro-batch's forward and backward, then ``optimizer_step`` once, after it reduced, scaled and clipped the
gradients).  :class:`PruningTask` hosts :class:`fairseq_bso.prune.masks.Pruner` there:

* ``build_model``: the pruner takes the model's weight matrices (``--prune-classes``), with ``--prune-ratio`` > 0;
* ``train_step``: at the start of an update, prune when the schedule says so (once per update) or re-derive the
  masks after a resume; after each backward pass, multiply the gradients by the masks, so that fairseq's
  all-reduce (``legacy_ddp``), gradient clipping, logged ``gnorm`` and the fp32 master gradients of ``--fp16``
  never include a pruned weight's gradient (with ``pytorch_ddp`` the all-reduce runs inside the backward pass, on
  gradients that are then masked alike on every rank);
* ``optimizer_step``: after the step, re-mask the weights, the fp32 master copy (``--fp16``) and every optimizer
  state tensor of their shape (:func:`fairseq_bso.prune.masks.optimizer_copies`).

:func:`register_pruned_task` gives any registered task a pruned twin: its class with the mixin (and the plugin's
batching fixes, ``fairseq_bso.fairseq_fixes.batching``, and ``--lean-greedy`` for translation tasks), its config
dataclass extended with the ``--prune-*`` options (an argparse-only task gets them through ``add_args``),
registered under a new name.  The plugin registers ``translation_pruned`` and ``language_modeling_pruned``; in
your own ``--user-dir``, after your task is registered::

    from fairseq_bso.prune.tasks import register_pruned_task
    register_pruned_task("my_task_pruned", "my_task")

A checkpoint of a pruned twin names the twin as its task; ``fairseq-bso-prune export`` writes it back as the base
task (:func:`stock_task`), so stock fairseq loads it without the plugin.
"""

import dataclasses
import logging
from typing import Optional

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY, register_task

from ..fairseq_fixes.batching import PluginBatching
from .masks import Pruner, PruningConfig, check_options

logger = logging.getLogger(__name__)

PRUNED_SUFFIX = "_pruned"


class PruningTask:
    """Task mixin (before the fairseq task in the bases): magnitude pruning under ``--prune-ratio`` > 0."""

    def __init__(self, cfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        check_options(cfg)  # bad --prune-* options fail before any data is read
        self.pruner: Optional[Pruner] = None

    @property
    def prune_cfg(self):
        return getattr(self, "cfg", None) or self.args  # a legacy (argparse) task keeps its options in .args

    def build_model(self, cfg, *args, **kwargs):
        model = super().build_model(cfg, *args, **kwargs)
        if self.prune_cfg.prune_ratio > 0:
            self.pruner = Pruner(self.prune_cfg, model)
        return model

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if self.pruner is None:
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad=ignore_grad)
        self.pruner.prepare(update_num, optimizer)  # prune when the schedule says so, before the forward pass
        out = super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad=ignore_grad)
        self.pruner.mask_gradients()  # before fairseq reduces, clips and logs them
        return out

    def optimizer_step(self, optimizer, model, update_num):
        if self.pruner is None:
            return super().optimizer_step(optimizer, model, update_num)
        self.pruner.before_step(update_num, optimizer)  # a no-op after train_step (a caller without it: the same)
        super().optimizer_step(optimizer, model, update_num)
        self.pruner.after_step(optimizer)  # weights, fp32 master copy, optimizer state: exact zeros


def pruned_task_class(base_cls, config_cls=None):
    """``base_cls`` with pruning, the plugin's batching fixes and (translation tasks) ``--lean-greedy``, and its
    config dataclass (``config_cls`` extended with :class:`PruningConfig`; None for an argparse-only task)."""
    from fairseq.tasks.translation import TranslationTask

    from ..distill.lean_greedy_task import LeanGreedy, LeanGreedyConfig

    seq2seq = issubclass(base_cls, TranslationTask) and not issubclass(base_cls, LeanGreedy)
    mixins = [m for m in (PruningTask, LeanGreedy if seq2seq else None, PluginBatching)
              if m is not None and not issubclass(base_cls, m)]
    name = "Pruned" + base_cls.__name__
    dc = None
    if config_cls is not None:
        extra = [c for c in (PruningConfig, LeanGreedyConfig if seq2seq else None)
                 if c is not None and not issubclass(config_cls, c)]
        dc = dataclasses.make_dataclass(name + "Config", [], bases=(config_cls, *extra))
        dc.__module__ = __name__
    namespace = {"__module__": __name__, "__doc__": f"{base_cls.__name__} with magnitude pruning "
                 f"(``--prune-*``, :class:`fairseq_bso.prune.tasks.PruningTask`)."}
    if dc is None:
        def add_args(cls, parser):
            base_cls.add_args(parser)
            gen_parser_from_dataclass(parser, PruningConfig())
            if seq2seq:
                gen_parser_from_dataclass(parser, LeanGreedyConfig())
        namespace["add_args"] = classmethod(add_args)
    return type(name, (*mixins, base_cls), namespace), dc


def register_pruned_task(name: str, base: str):
    """Register under ``name`` a pruned twin of the task registered as ``base`` (see the module docstring);
    returns its class.  Registering the same name again returns the class registered first (fairseq's rule)."""
    if name in TASK_REGISTRY:
        return TASK_REGISTRY[name]
    if base not in TASK_REGISTRY:
        raise ValueError(f"register_pruned_task({name!r}, {base!r}): no task is registered as {base!r} (import the "
                         f"module that registers it first)")
    cls, dc = pruned_task_class(TASK_REGISTRY[base], TASK_DATACLASS_REGISTRY.get(base))
    cls.stock_task_name = base
    return register_task(name, dataclass=dc)(cls)


def stock_task(name: str) -> Optional[str]:
    """The task a checkpoint of task ``name`` is exported as: the nearest registered task in its class's bases
    that the plugin did not make (``translation`` for ``constrained_beam_training``, ``seq_kd`` and
    ``translation_pruned``; ``language_modeling`` for ``language_modeling_pruned``; ``name`` itself for a task
    of fairseq's or the user's).  None when no task is registered as ``name``."""
    cls = TASK_REGISTRY.get(name)
    if cls is None:
        return None
    if getattr(cls, "stock_task_name", None):
        return stock_task(cls.stock_task_name)
    names = {id(c): n for n, c in TASK_REGISTRY.items()}
    for c in cls.__mro__:
        if id(c) in names and not c.__module__.startswith("fairseq_bso"):
            return names[id(c)]
    return None


def stock_task_fields(name: str):
    """The option names of the exported task ``stock_task(name)`` (None: an argparse-only task, keep all)."""
    dc = TASK_DATACLASS_REGISTRY.get(name)
    return None if dc is None else set(dc.__dataclass_fields__)


register_pruned_task("translation" + PRUNED_SUFFIX, "translation")
register_pruned_task("language_modeling" + PRUNED_SUFFIX, "language_modeling")
