"""Magnitude pruning (See, Luong and Manning, CoNLL 2016) for fairseq models.

Weights and classes
    Only weight matrices take part (``dim >= 2``; biases and layer norms never).
    Each matrix belongs to a *kind* (``--prune-classes`` picks kinds) and a *class*
    (the unit of class-uniform and class-distribution pruning):

    =============  ====================================================  =======================
    kind           parameters                                             class
    =============  ====================================================  =======================
    embeddings     ``*.embed_tokens.weight`` (source, target)             each embedding
    attention      names with ``attention`` / ``attn``                    each projection
    output         ``fc_out``, ``additional_fc``, ``output_projection``   each projection
    encoder        every other ``encoder.*`` matrix                       each layer (an
    decoder        every other ``decoder.*`` matrix                       ``nn.LSTM`` layer's
                                                                          ih/hh and reverse
                                                                          matrices together)
    =============  ====================================================  =======================

    A matrix shared by two modules (``--share-decoder-input-output-embed``) is
    counted once, under its first name.

Schemes (prune a share ``r`` of the selected weights)
    class-blind         the ``floor(r·N)`` smallest ``|w|`` over all selected weights
    class-uniform       the ``floor(r·N_c)`` smallest ``|w|`` within each class c
    class-distribution  the ``floor(r·N)`` smallest ``|w| / σ_c`` (σ_c: the class's standard
                        deviation), i.e. ``|w| < λ·σ_c`` with one global λ

Ties are broken by position (stable sort), so the selection is exact and
reproducible; ``tests/test_pruning.py`` checks it against a brute-force sort.

Masks hold exactly: the training task (:mod:`.tasks`) prunes when the schedule
says so at the start of an update (before its forward pass), multiplies the
gradients by the mask right after each backward pass (so fairseq's gradient
clipping, its logged ``gnorm`` and the fp32 master gradients of ``--fp16`` never
see a pruned weight's gradient), and after every optimizer step re-masks the
weights, the optimizer's fp32 master copy of them (``--fp16``) and every
optimizer state tensor of their shape (Adam's moments), so no pruned position of
any of those is ever non-zero (:func:`optimizer_copies`).

Masks are not stored anywhere: they are the exact zeros of the
pruned matrices, re-derived after a resume (fairseq 0.12.2 does not restore
``task_state`` on resume), so checkpoints keep fairseq's parameter names and load
in stock fairseq.

A run that starts past ``--prune-start-update`` without the zeros the schedule has
made by then (a dense checkpoint restored with ``--restore-file`` keeps fairseq's
update count unless ``--reset-optimizer`` is given) would re-derive masks that
prune nothing: when the re-derived sparsity is below what the schedule has
reached by that update, the run prunes to it there and then, with a warning.
"""

import logging
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass

logger = logging.getLogger(__name__)

KINDS = ("embeddings", "encoder", "decoder", "attention", "output")
SCHEMES = ("class-blind", "class-uniform", "class-distribution")


@dataclass
class PruningConfig(FairseqDataclass):
    prune_ratio: float = field(default=0.0, metadata={"help": "share of the selected weights to prune, in [0, 1)"})
    prune_scheme: ChoiceEnum(SCHEMES) = field(  # type: ignore
        default="class-blind", metadata={"help": "class-blind, class-uniform or class-distribution"})
    prune_classes: str = field(
        default=",".join(KINDS),
        metadata={"help": f"comma-separated weight kinds that take part: {', '.join(KINDS)} (default: all)"})
    prune_schedule: ChoiceEnum(["one-shot", "gradual"]) = field(  # type: ignore
        default="one-shot",
        metadata={"help": "one-shot: prune to --prune-ratio at --prune-start-update; gradual: cubic ramp from "
                          "--prune-start-update to --prune-end-update, every --prune-frequency updates"})
    prune_start_update: int = field(default=0, metadata={"help": "update at which pruning starts"})
    prune_end_update: int = field(default=-1, metadata={"help": "gradual: update at which the ratio is reached"})
    prune_frequency: int = field(default=100, metadata={"help": "gradual: updates between two pruning steps"})


def weight_kind(name: str) -> str:
    if re.search(r"(^|\.)embed_tokens\.weight$", name):
        return "embeddings"
    if re.search(r"(attention|attn)", name):
        return "attention"
    if re.search(r"(^|\.)(fc_out|additional_fc|output_projection)\.weight$", name):
        return "output"
    return name.split(".", 1)[0] if name.split(".", 1)[0] in ("encoder", "decoder") else "decoder"


def weight_class(name: str) -> str:
    """The class of a weight matrix: its module, with an nn.LSTM layer's matrices merged."""
    m = re.match(r"(.*)\.weight_(?:ih|hh)_l(\d+)(?:_reverse)?$", name)  # nn.LSTM
    if m:
        return f"{m.group(1)}.l{m.group(2)}"
    m = re.match(r"(.*)\.weight_(?:ih|hh)$", name)  # nn.LSTMCell (fairseq's LSTMDecoder layers)
    if m:
        return m.group(1)
    return re.sub(r"\.weight$", "", name)


def prunable(named_parameters, kinds: Sequence[str]) -> "OrderedDict[str, torch.nn.Parameter]":
    """Weight matrices of the chosen kinds, shared tensors once, in parameter order."""
    out, seen = OrderedDict(), set()
    for name, p in named_parameters:
        key = (p.data_ptr(), tuple(p.shape))  # a tied weight, in a model or in a loaded state dict
        if p.dim() < 2 or key in seen or weight_kind(name) not in kinds:
            continue
        seen.add(key)
        out[name] = p
    return out


def parse_kinds(spec: str) -> List[str]:
    kinds = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"--prune-classes {spec!r}: unknown kind(s) {unknown}; choose from {', '.join(KINDS)}")
    return kinds


def check_options(cfg) -> None:
    if not 0.0 <= cfg.prune_ratio < 1.0:
        raise ValueError(f"--prune-ratio must be in [0, 1), got {cfg.prune_ratio}")
    if str(cfg.prune_scheme) not in SCHEMES:
        raise ValueError(f"--prune-scheme {cfg.prune_scheme!r}: choose from {', '.join(SCHEMES)}")
    parse_kinds(cfg.prune_classes)
    if cfg.prune_start_update < 0:
        raise ValueError(f"--prune-start-update must be >= 0, got {cfg.prune_start_update}")
    if str(cfg.prune_schedule) == "gradual":
        if cfg.prune_end_update <= cfg.prune_start_update:
            raise ValueError(f"--prune-schedule gradual needs --prune-end-update > --prune-start-update "
                             f"(got {cfg.prune_end_update} <= {cfg.prune_start_update})")
        if cfg.prune_frequency < 1:
            raise ValueError(f"--prune-frequency must be >= 1, got {cfg.prune_frequency}")


def compute_masks(weights: "OrderedDict[str, torch.Tensor]", ratio: float, scheme: str) -> Dict[str, torch.Tensor]:
    """Boolean keep-masks (True = kept) pruning ``ratio`` of the weights by ``scheme``."""
    names = list(weights)
    flat = [weights[n].detach().reshape(-1).float() for n in names]
    if scheme == "class-uniform":
        by_class: Dict[str, List[int]] = OrderedDict()
        for i, n in enumerate(names):
            by_class.setdefault(weight_class(n), []).append(i)
        keep = [None] * len(names)
        for members in by_class.values():
            part = _keep_smallest_pruned(torch.cat([flat[i].abs() for i in members]), ratio)
            for i, k in zip(members, part.split([flat[i].numel() for i in members])):
                keep[i] = k
    else:
        if scheme == "class-distribution":
            sigma = {}
            for i, n in enumerate(names):
                sigma.setdefault(weight_class(n), []).append(flat[i])
            sigma = {c: torch.cat(v).std().clamp(min=1e-12) for c, v in sigma.items()}
            scores = [flat[i].abs() / sigma[weight_class(n)] for i, n in enumerate(names)]
        elif scheme == "class-blind":
            scores = [f.abs() for f in flat]
        else:
            raise ValueError(f"unknown pruning scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
        keep = list(_keep_smallest_pruned(torch.cat(scores), ratio).split([f.numel() for f in flat]))
    return {n: k.view_as(weights[n]) for n, k in zip(names, keep)}


def _keep_smallest_pruned(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    k = int(math.floor(ratio * scores.numel()))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, stable=True).indices
        keep[order[:k]] = False
    return keep


def cubic_ratio(update: int, final_ratio: float, start: int, end: int) -> float:
    """Gradual pruning's target at an update: r·(1 − (1 − progress)³) (Zhu and Gupta, 2017)."""
    if update < start:
        return 0.0
    progress = min(1.0, (update - start) / max(1, end - start))
    return final_ratio * (1.0 - (1.0 - progress) ** 3)


def sparsity_table(weights: "OrderedDict[str, torch.Tensor]") -> List[Tuple[str, int, int]]:
    """(class, non-zero, total) per class, then per kind, then the total."""
    rows: Dict[str, List[int]] = OrderedDict()
    for n, w in weights.items():
        nz, total = int(torch.count_nonzero(w)), w.numel()
        for key in (weight_class(n), f"[{weight_kind(n)}]", "[total]"):
            acc = rows.setdefault(key, [0, 0])
            acc[0] += nz
            acc[1] += total
    classes = [k for k in rows if not k.startswith("[")]
    kinds = [k for k in rows if k.startswith("[") and k != "[total]"]
    return [(k, rows[k][0], rows[k][1]) for k in classes + kinds + ["[total]"]]


def format_table(rows) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'class':<{width}}  {'non-zero':>12}  {'total':>12}  {'sparsity':>8}"]
    for name, nz, total in rows:
        lines.append(f"{name:<{width}}  {nz:>12,}  {total:>12,}  {1 - nz / max(total, 1):>8.2%}")
    return "\n".join(lines)


def optimizer_copies(optimizer, weights: "OrderedDict[str, torch.Tensor]") -> Dict[str, List[torch.Tensor]]:
    """For each weight, the optimizer's tensors of its shape that hold it or state about it, as views.

    ``optimizer`` is a fairseq optimizer (``FairseqOptimizer``, ``FP16Optimizer`` flat or not,
    ``MemoryEfficientFP16Optimizer``, ``AMPOptimizer``) or a torch one.  Returned per weight name: the fp32
    master copy of ``FP16Optimizer`` (its slice of the flat master tensor when the gradients are flattened), and
    every tensor of the inner torch optimizer's state for the parameter it steps (Adam's ``exp_avg`` and
    ``exp_avg_sq``, SGD's momentum buffer) that has as many elements as the weight.  A state tensor of another
    size (Adafactor's factored moments, a step counter) is left out: it holds no per-weight value."""
    masters = {}  # id(model parameter) -> (parameter the inner optimizer steps, element offset in it)
    opt = optimizer
    for _ in range(8):  # unwrap fairseq's wrappers down to the torch optimizer
        if isinstance(opt, torch.optim.Optimizer):
            break
        if hasattr(opt, "fp32_params") and hasattr(opt, "fp16_params"):  # FP16Optimizer
            fp32 = opt.fp32_params
            if torch.is_tensor(fp32) or isinstance(fp32, dict):  # flat: fairseq lays the params out in order
                flats = fp32 if isinstance(fp32, dict) else {None: fp32}
                for device, flat in flats.items():
                    offset = 0
                    for p in opt.fp16_params:
                        if len(flats) > 1 and p.device.index != device:
                            continue
                        masters[id(p)] = (flat, offset)
                        offset += p.numel()
            else:
                masters.update((id(p), (p32, 0)) for p, p32 in zip(opt.fp16_params, fp32))
            opt = opt.fp32_optimizer
        elif hasattr(opt, "wrapped_optimizer"):  # MemoryEfficientFP16Optimizer
            opt = opt.wrapped_optimizer
        elif hasattr(opt, "fp32_optimizer"):  # AMPOptimizer
            opt = opt.fp32_optimizer
        else:
            opt = getattr(opt, "optimizer", None)  # FairseqOptimizer -> its torch optimizer
    state = opt.state if isinstance(opt, torch.optim.Optimizer) else {}
    out: Dict[str, List[torch.Tensor]] = {}
    for name, p in weights.items():
        target, offset = masters.get(id(p), (p, 0))
        n = p.numel()

        def view(t):
            return t.detach().reshape(-1)[offset:offset + n].view(p.shape)

        copies = [view(target)] if target is not p else []
        copies += [view(t) for t in state.get(target, {}).values()
                   if torch.is_tensor(t) and t.numel() == target.numel() and t.numel() >= n]
        out[name] = copies
    return out


class Pruner:
    """The training-time callback, hosted by a task (:class:`fairseq_bso.prune.tasks.PruningTask`).

    Per update: :meth:`prepare` (prune when the schedule says so, once per update; re-derive the masks after a
    resume), :meth:`mask_gradients` after each backward pass, :meth:`after_step` after the optimizer step.
    :meth:`before_step` is :meth:`prepare` plus :meth:`mask_gradients`, for a host without a backward hook."""

    def __init__(self, cfg, model):
        check_options(cfg)
        self.cfg = cfg
        self.scheme = str(cfg.prune_scheme)
        self.schedule = str(cfg.prune_schedule)
        self.weights = prunable(model.named_parameters(), parse_kinds(cfg.prune_classes))
        if not self.weights:
            names = ", ".join(n for n, _ in list(model.named_parameters())[:6])
            raise ValueError(f"--prune-classes {cfg.prune_classes!r} selects no weight matrix of this model "
                             f"(its parameters: {names}, ...)")
        self.masks: Optional[Dict[str, torch.Tensor]] = None
        self.current_ratio = 0.0
        self.pruned_at: Optional[int] = None  # the update of the last pruning step (one per update)

    def target_ratio(self, update: int) -> Optional[float]:
        """The ratio to prune to at this update, or None when the masks stay as they are."""
        c = self.cfg
        if self.schedule == "one-shot":
            return c.prune_ratio if update == c.prune_start_update else None
        if update < c.prune_start_update or update > c.prune_end_update:
            return None
        if (update - c.prune_start_update) % c.prune_frequency == 0 or update == c.prune_end_update:
            return cubic_ratio(update, c.prune_ratio, c.prune_start_update, c.prune_end_update)
        return None

    def started(self, update: int) -> bool:
        return update >= self.cfg.prune_start_update

    def ratio_reached(self, update: int) -> float:
        """The ratio the schedule has pruned to by this update (its last pruning step at or before it)."""
        c = self.cfg
        if update < c.prune_start_update:
            return 0.0
        if self.schedule == "one-shot" or update >= c.prune_end_update:
            return c.prune_ratio
        last = c.prune_start_update + (update - c.prune_start_update) // c.prune_frequency * c.prune_frequency
        return cubic_ratio(last, c.prune_ratio, c.prune_start_update, c.prune_end_update)

    def pruned_count(self, ratio: float) -> int:
        """How many weights pruning to ``ratio`` zeroes (per class for class-uniform, as ``compute_masks``)."""
        if self.scheme == "class-uniform":
            sizes: Dict[str, int] = OrderedDict()
            for n, p in self.weights.items():
                sizes[weight_class(n)] = sizes.get(weight_class(n), 0) + p.numel()
            return sum(int(math.floor(ratio * size)) for size in sizes.values())
        return int(math.floor(ratio * sum(p.numel() for p in self.weights.values())))

    def prepare(self, update: int, optimizer=None) -> None:
        """At the start of an update: prune if the schedule says so (once per update), or re-derive the masks
        from the weights' exact zeros when this run starts past the start of pruning (a resume)."""
        ratio = self.target_ratio(update)
        if ratio is not None and self.pruned_at != update:
            self.prune_to(ratio, update, optimizer)
        elif self.masks is None and self.started(update):
            self.masks_from_zeros(update, optimizer)  # resumed after pruning began: the masks are the exact zeros

    def mask_gradients(self) -> None:
        if self.masks is not None:
            for n, p in self.weights.items():
                if p.grad is not None:
                    p.grad.mul_(self.masks[n])

    def before_step(self, update: int, optimizer=None) -> None:
        self.prepare(update, optimizer)
        self.mask_gradients()

    def after_step(self, optimizer=None) -> None:
        """Re-mask the weights and, given the optimizer, its master copies and state tensors of them."""
        if self.masks is None:
            return
        with torch.no_grad():
            copies = optimizer_copies(optimizer, self.weights) if optimizer is not None else {}
            for n, p in self.weights.items():
                p.mul_(self.masks[n])
                for t in copies.get(n, ()):
                    t.mul_(self.masks[n])

    def nonzero_pruned(self, optimizer=None) -> Dict[str, int]:
        """Non-zero values at pruned positions: in the weights, and in the optimizer's copies and state
        (``optimizer_copies``); a check for tests and benchmarks (host syncs; not for the training loop)."""
        counts = {"weights": 0, "optimizer": 0}
        if self.masks is None:
            return counts
        copies = optimizer_copies(optimizer, self.weights) if optimizer is not None else {}
        for n, p in self.weights.items():
            pruned = self.masks[n] == 0
            counts["weights"] += int(p.detach()[pruned].ne(0).sum())
            counts["optimizer"] += sum(int(t[pruned].ne(0).sum()) for t in copies.get(n, ()))
        return counts

    def prune_to(self, ratio: float, update: int, optimizer=None) -> None:
        with torch.no_grad():
            masks = compute_masks(self.weights, ratio, self.scheme)
            if self.masks is not None:  # gradual: a pruned weight stays pruned
                masks = {n: m & self.masks[n].bool() for n, m in masks.items()}
            self.masks = {n: m.to(self.weights[n].dtype) for n, m in masks.items()}
            self.after_step(optimizer)
        self.current_ratio = ratio
        self.pruned_at = update
        self.log(f"pruned to {ratio:.2%} ({self.scheme}) at update {update}")

    def masks_from_zeros(self, update: int, optimizer=None) -> None:
        self.masks = {n: p.detach().ne(0).to(p.dtype) for n, p in self.weights.items()}
        total = sum(p.numel() for p in self.weights.values())
        zeros = total - sum(int(torch.count_nonzero(p)) for p in self.weights.values())
        target = self.ratio_reached(update)
        if zeros >= self.pruned_count(target):
            self.after_step(optimizer)  # a checkpoint's optimizer state may predate the masks
            self.log(f"masks re-derived from the exact zeros of the weights at update {update} (resume)")
            return
        c = self.cfg
        logger.warning(
            f"pruning: this run starts at update {update}, past --prune-start-update {c.prune_start_update}, but the "
            f"selected weights are only {zeros / total:.2%} sparse ({zeros:,} exact zeros of {total:,}) where "
            f"--prune-ratio {c.prune_ratio} --prune-schedule {self.schedule} has them {target:.2%} sparse by now; "
            f"pruning to {target:.2%} at this update (a checkpoint restored with --restore-file keeps its update "
            f"count unless --reset-optimizer is given)")
        self.prune_to(target, update, optimizer)

    def log(self, what: str) -> None:
        rows = sparsity_table(OrderedDict((n, p.detach()) for n, p in self.weights.items()))
        logger.info(f"{what}; sparsity per class:\n{format_table(rows)}")
