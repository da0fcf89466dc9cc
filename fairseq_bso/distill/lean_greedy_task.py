"""``--lean-greedy``: a task option that makes ``fairseq-generate --beam 1`` decode with the lean greedy decoder
(:class:`fairseq_bso.distill.greedy.GreedyGenerator`, the same hypotheses as fairseq's generator at beam 1).

``LeanGreedy`` is a task mixin (before the fairseq task in the bases) for sequence-to-sequence tasks whose
``build_generator`` is fairseq's (``translation`` and its subclasses); ``LeanGreedyConfig`` holds its option.
Every plugin translation task has it: ``constrained_beam_training``, ``seq_kd`` (the corpus decoded greedily), the
pruned twins of ``translation`` and of any translation task (``fairseq_bso.prune.tasks.register_pruned_task``).
``language_modeling_pruned`` has not: a language model generates from prefix tokens, which the lean decoder does
not implement.
"""

from dataclasses import dataclass, field

from fairseq.dataclass import FairseqDataclass

from .greedy import GreedyGenerator, check_generation_options


@dataclass
class LeanGreedyConfig(FairseqDataclass):
    lean_greedy: bool = field(
        default=False,
        metadata={"help": "with --beam 1: decode with fairseq_bso.distill.greedy.GreedyGenerator, the same "
                          "hypotheses as fairseq's generator at beam 1 without its beam bookkeeping (faster at small "
                          "batches; for distilled students decoded greedily)"})


class LeanGreedy:
    """Task mixin: ``build_generator`` returns a ``GreedyGenerator`` under ``--lean-greedy`` (options it does not
    implement are refused, naming the option), fairseq's generator otherwise."""

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        cfg = getattr(self, "cfg", None) or getattr(self, "args", None)
        if not getattr(cfg, "lean_greedy", False):
            return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, prefix_allowed_tokens_fn)
        if prefix_allowed_tokens_fn is not None:
            raise ValueError("--lean-greedy decodes with fairseq's standard scores: it cannot be combined with "
                             "prefix_allowed_tokens_fn")
        check_generation_options(args)
        return super().build_generator(models, args, seq_gen_cls=GreedyGenerator,
                                       extra_gen_cls_kwargs=extra_gen_cls_kwargs)
