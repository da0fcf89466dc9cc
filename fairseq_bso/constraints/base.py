"""Output constraints that shape the beam, in training (ConBSO) and generation alike.

A constraint is a per-row state (one row per beam item of every sentence) and
four vectorized operations on it:

* ``initial_state(src_tokens, beam)``: the state of the empty prefix, ``beam`` rows per sentence;
* ``mask(state)``: (rows, V) additive mask, 0 for allowed tokens and −inf for the others;
  ``apply_(scores, state)`` adds it to ``scores`` in place (override it to skip building the
  mask: a (rows, V) tensor per step costs an allocation and a pass of its own);
* ``step(state, tokens)``: the state after each row emits ``tokens`` (rows,);
* ``reorder(state, order)``: rows reordered (``order`` may repeat rows: beam reorder, LaSO reset).

The same objects serve the ``bso`` training search and ``fairseq-generate``
(:mod:`fairseq_bso.bso.decoding`).  ``check(src, tgt)`` validates a gold pair at data
loading and returns an error message or None.

Register your own with :func:`register_constraint` from your own ``--user-dir``
(see ``examples/constraints/README.md``).
"""

from typing import Callable, Dict, Optional, Type

import torch
from torch import Tensor

NEG_INF = float("-inf")

CONSTRAINTS: Dict[str, Type["Constraint"]] = {}


def register_constraint(name: str) -> Callable:
    def wrap(cls):
        if name in CONSTRAINTS and CONSTRAINTS[name] is not cls:
            raise ValueError(f"constraint {name!r} is already registered by {CONSTRAINTS[name].__name__}")
        CONSTRAINTS[name] = cls
        cls.name = name
        return cls
    return wrap


def build_constraint(name: str, src_dict, tgt_dict) -> Optional["Constraint"]:
    if name in (None, "", "none"):
        return None
    if name not in CONSTRAINTS:
        raise ValueError(f"--constraint {name!r} is unknown; registered: none, {', '.join(sorted(CONSTRAINTS))}")
    return CONSTRAINTS[name](src_dict, tgt_dict)


class Constraint:
    name = "base"
    # (a, b) when the output length is known from the source length (generation stops at
    # a * src_len + b steps, src_len counting </s>); None: fairseq's --max-len-a/b
    max_len_a_b = None

    def __init__(self, src_dict, tgt_dict):
        self.src_dict = src_dict
        self.tgt_dict = tgt_dict

    def initial_state(self, src_tokens: Tensor, beam: int):
        raise NotImplementedError

    def mask(self, state) -> Tensor:
        raise NotImplementedError

    def apply_(self, scores: Tensor, state) -> Tensor:
        """``scores += mask(state)``, in place; returns ``scores``."""
        return scores.add_(self.mask(state).to(scores.dtype))

    def step(self, state, tokens: Tensor):
        raise NotImplementedError

    def reorder(self, state, order: Tensor):
        return state.index_select(0, order)

    def check(self, src: Tensor, tgt: Tensor) -> Optional[str]:
        """Why the gold pair (1-d tensors, target ending in </s>) violates the constraint, or None."""
        state = self.initial_state(src.unsqueeze(0), 1)
        for i, tok in enumerate(tgt.tolist()):
            if self.mask(state)[0, tok] == NEG_INF:
                return f"target token {i} ({self.tgt_dict[tok]!r}) is not allowed there"
            state = self.step(state, tgt.new_tensor([tok]))
        return None


class SourceWordsConstraint(Constraint):
    """What the built-in constraints share: they compare target tokens with source tokens, so the source and
    the target must have one dictionary (checked here, with an error naming the constraint); ``eos``, ``pad``
    and ``vocab`` (the target vocabulary size) are set; the state is a tuple of per-row tensors."""

    def __init__(self, src_dict, tgt_dict):
        super().__init__(src_dict, tgt_dict)
        if src_dict is not None and list(src_dict.symbols) != list(tgt_dict.symbols):
            raise ValueError(f"--constraint {self.name} needs one dictionary for source and target "
                             "(fairseq-preprocess --joined-dictionary)")
        self.eos, self.pad = tgt_dict.eos(), tgt_dict.pad()
        self.vocab = len(tgt_dict)

    def reorder(self, state, order: Tensor):
        return tuple(x.index_select(0, order) for x in state)


@register_constraint("word_order")
class WordOrderConstraint(SourceWordsConstraint):
    """The output is a permutation of the source words: a token is allowed while an
    unused source position holds it; ``</s>`` only when every position is used.
    Needs a joined dictionary.

    State per row: the source words (rows, S) and which positions are used (rows, S).
    Everything is O(rows · S) except ``apply_``'s one fill of the (rows, V) scores (the mask
    is ``apply_`` on zeros), so a step costs about one pass over the scores.
    """

    max_len_a_b = (1, 0)  # n words + </s> = the source length

    def initial_state(self, src_tokens: Tensor, beam: int):
        words = src_tokens.masked_fill(src_tokens.eq(self.eos), self.pad)
        used = words.eq(self.pad)  # pads (and </s>) count as used positions
        return words.repeat_interleave(beam, dim=0), used.repeat_interleave(beam, dim=0)

    def mask(self, state) -> Tensor:
        words, _ = state
        return self.apply_(torch.zeros(words.size(0), self.vocab, device=words.device), state)

    def apply_(self, scores: Tensor, state) -> Tensor:
        """In place: every score −inf but those of unused source words (and of ``</s>`` once every
        word is used); one fill of (rows, V) and O(rows · S) gathers and scatters, no mask tensor."""
        words, used = state
        kept = scores.gather(1, words).masked_fill_(used, NEG_INF)  # pads count as used
        eos = scores[:, self.eos].masked_fill(~used.all(1), NEG_INF)
        scores.fill_(NEG_INF)
        scores.scatter_reduce_(1, words, kept, reduce="amax")  # a repeated word: any unused copy allows it
        scores[:, self.pad] = NEG_INF
        scores[:, self.eos] = eos
        return scores

    def step(self, state, tokens: Tensor):
        words, used = state
        match = words.eq(tokens.unsqueeze(1)) & ~used
        first = match.long().argmax(1, keepdim=True)  # the first unused position holding the token
        used = used.scatter(1, first, match.gather(1, first) | used.gather(1, first))
        return words, used

    def check(self, src: Tensor, tgt: Tensor) -> Optional[str]:
        words = lambda t: sorted(x for x in t.tolist() if x not in (self.eos, self.pad))  # noqa: E731
        if words(src) != words(tgt) or tgt[-1].item() != self.eos or (tgt[:-1] == self.eos).any():
            return "the target is not a permutation of the source words"
        return None


@register_constraint("arc_standard")
class ArcStandardConstraint(SourceWordsConstraint):
    """Arc-standard transition sequences (see :mod:`fairseq_bso.constraints.parsing`): a shift must emit
    the next source word; a reduce (``@L_*``/``@R_*``) needs two items on the stack;
    ``</s>`` only after all n words are shifted and one item is left: 2n − 1 actions.

    State per row: (source words, next word position, stack size).  Needs a joined dictionary.
    """

    max_len_a_b = (2, -3)  # 2n − 1 actions + </s>, the source length being n + 1

    def __init__(self, src_dict, tgt_dict):
        super().__init__(src_dict, tgt_dict)
        self.reduce = torch.tensor([s.startswith("@L_") or s.startswith("@R_") for s in tgt_dict.symbols])
        if not self.reduce.any():
            raise ValueError("--constraint arc_standard: the dictionary has no @L_/@R_ reduce actions")

    def initial_state(self, src_tokens: Tensor, beam: int):
        # right-align-free copy of the words: position p of row = p-th word (pads and </s> dropped)
        is_word = src_tokens.ne(self.pad) & src_tokens.ne(self.eos)
        n = is_word.sum(1)
        order = torch.sort((~is_word).int(), dim=1, stable=True).indices  # words first, in order
        words = src_tokens.gather(1, order).masked_fill(
            torch.arange(src_tokens.size(1), device=src_tokens.device) >= n.unsqueeze(1), self.pad)
        words = torch.cat([words, words.new_full((words.size(0), 1), self.pad)], 1)  # a slot past the end
        zeros = torch.zeros_like(n)
        return tuple(x.repeat_interleave(beam, dim=0) for x in (words, n, zeros, zeros))

    def mask(self, state) -> Tensor:
        words, n, pos, stack = state
        rows = words.size(0)
        reduce = self.reduce.to(words.device)
        allowed = reduce.unsqueeze(0) & (stack >= 2).unsqueeze(1)
        allowed = allowed.expand(rows, self.vocab).clone()
        can_shift = pos < n
        next_word = words.gather(1, pos.unsqueeze(1)).squeeze(1)
        allowed[torch.arange(rows, device=words.device)[can_shift], next_word[can_shift]] = True
        allowed[:, self.eos] = (pos == n) & (stack == 1)
        return torch.zeros(allowed.shape, device=words.device).masked_fill_(~allowed, NEG_INF)

    def step(self, state, tokens: Tensor):
        words, n, pos, stack = state
        reduce = self.reduce.to(tokens.device)[tokens]
        shift = ~reduce & tokens.ne(self.eos)
        # clamped: a dead beam row (−inf score) may carry any token
        return words, n, torch.minimum(pos + shift.long(), n), (stack + shift.long() - reduce.long()).clamp(min=0)
