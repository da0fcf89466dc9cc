"""The BSO training search (Wiseman and Rush 2016, Algorithm 1), vectorized.

Notation follows the paper.  ``f(w_t, h_{t-1})`` is the decoder's raw logit (no
softmax); the beam at step t holds the top K successors of the beam at t-1,
ranked by the step-t logits alone.  At step t:

* **violation**: the gold ``y_t`` does not beat ``ŷ^(K)_t``, the K-th item on the
  beam, by the margin (1): ``f(y_t) < f(ŷ^(K)_t) + 1``.  At the last step the
  rival is the best *incorrect* sequence instead (the gold must end on top).
* **reset** (LaSO): after a violation the beam is reset to the single gold prefix
  ``y_{1:t}`` with the gold decoder state (and the gold constraint state), and the
  search goes on from there.
* **Δ**: the cost of the violating segment (since the last reset) against the
  gold segment, see :mod:`fairseq_bso.bso.costs`.

    L = Σ_t Δ_t · [1 − f(y_t, h_{t−1}) + f(ŷ^(K)_t, ĥ^(K)_{t−1})]   over violation steps t

Two passes, so that the backward cost does not grow with K:

1. :func:`bso_search` runs the search without autograd over all B·K beam rows at
   once.  The gold prefix is always on the beam (it either never fell off or the
   beam was just reset to it), so no separate gold row is searched: a reset is a
   beam reorder in which every row of the sentence copies the gold row, followed
   by the gold token.  It records the violation steps, the resets, Δ, and the
   tokens of the violating path.
2. :func:`rescore` runs the decoder under autograd on 2·B rows only: the gold
   path and the violating path.  At a reset the violating row's decoder state is
   spliced from the gold row (``reorder_incremental_state`` with a repeated row,
   which works for any fairseq incremental decoder), so the gradient of the next
   violating segment flows into the gold path.  Only the two logits the loss
   uses are computed (rows of the output projection), never a softmax.

Learning to stop (optional, ``stop=True``; after Ma, Zheng and Huang, NAACL 2019).  The
paper's search treats ``</s>`` as an ordinary token and never compares hypotheses of
different lengths, while a decoder that finalizes at ``</s>`` (fairseq's generator, and
``--bso-decoding``) picks the best finished hypothesis across lengths.  With ``stop`` the
training search does what the generator does, as a named step (:func:`best_finished`):

* at a step t before the gold's last step, an item ending in ``</s>`` that ranks in the top K
  of the step's candidates *finishes*: it leaves the beam, and the beam holds the top K
  unfinished items (the generator keeps K active hypotheses the same way); the margin check
  at t still compares the gold with the K-th of *all* the step's candidates, finishing ones
  included (in fairseq's generator K finished hypotheses end the search, so one that finishes
  above the gold competes with it at its step, as in the paper's search);
* the decoder will compare a finished hypothesis with the gold's *final* score, so that is
  what training compares it with, at the step where it finishes: the best hypothesis ŷ
  finishing at t is a violation when f_t(ŷ) + 1 > f_T(y), with f_T(y) the gold's score at its
  last step T (:func:`gold_final_scores`, a teacher-forced pass over the gold before the
  search: the gold path does not depend on the beam).  Its loss term is
  Δ·[1 − f_T(y) + f_t(ŷ)]; with the ``log_softmax`` score both sides are summed from the
  segment's start (the gold to T, ŷ to t); Δ compares ŷ's segment (to t) with the gold's (to
  T).  Like any violation it resets the beam to the gold prefix y_{1:t} (so each violating
  segment keeps a single path).  When step t also has an ordinary violation, the one with the
  larger rival-minus-gold gap is the step's violation (the ordinary one on a tie);
* at the gold's last step the rival is the paper's best incorrect item.
* Where this differs from Ma et al.: only the abstract and introduction of their paper were
  available to read here.  They also propose a new ranking with a stopping criterion for
  decoding; this step changes training only (``--bso-decoding`` is fairseq's generator: it
  stops when K hypotheses have finished and returns the best f(``</s>``); fairseq's standard
  beam, used with the ``log_softmax`` score, compares finished hypotheses by length-normalized
  scores, which this step does not model).  Their loss penalizes suboptimal finished
  candidates found by the training beam; this step takes the single best one of each step.
  Hypotheses longer than the gold are never compared (the search stops with the gold).
* History, on translation with raw logits (``benchmarks/results/translation.json``, row
  ``bso_stop``; ``translation_stop_at_finish_partial.json``): until 2026-12-02 a finished
  hypothesis was compared only at the gold's last step, if no reset had discarded it, and the
  margin check ranked the gold among the unfinished items only; outputs grew too short (greedy
  length ratio 0.80 after one epoch, against 0.99 for the NLL start).  Comparing the finished
  hypothesis with the gold's final score where it finishes (commit 58462d3) did not change that
  (0.80 after one epoch, 0.73 after two).  The likely cause: a ``</s>`` item that was kept out
  of the margin check is never pushed down at its step while every other competitor is, so
  ``</s>`` becomes the argmax off the gold.  Hence the check above ranks finishing items too.

Ties and dead rows: a beam slot without a valid item (the first step, right after
a reset, or when fewer than K successors exist, e.g. K ≥ vocabulary) scores −inf;
a −inf rival never causes a violation.  ``</s>`` is an ordinary token during the
training search (every beam item is a length-t prefix at step t, as in the
paper); ``<pad>`` and ``<s>`` are never candidates.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.profiler import record_function

NEG_INF = float("-inf")

#: The score f that ranks the beam and enters the margin.
#:
#: * ``logit`` (the paper): the raw logit of the last token, f(ŷ_t | ĥ_{t-1}); the
#:   decoder's state summarizes the prefix.  Decode with ``--bso-decoding``.
#: * ``log_softmax``: the prefix's summed log-probability S(ŷ_{1:t}) = Σ_j log p(ŷ_j | ŷ_<j),
#:   a locally normalized score, as in the sequence-level margin losses of Edunov et al.
#:   (2018).  Decode with fairseq's standard beam; combines with the NLL term.  A
#:   violation compares S(y_{1:t}) with S(ŷ^(K)_{1:t}); after a reset both share the gold
#:   prefix y_{1:s-1}, so the loss term is the difference of the segments' sums:
#:   Δ·[1 − Σ_{j=s..t} log p(y_j) + Σ_{j=s..t} log p(ŷ_j)].
SCORES = ("logit", "log_softmax")

#: When the gold is exactly the K-th item of the beam (before the last step):
#:
#: * ``self`` (the paper's rule read literally): ŷ^(K) is the gold itself, f(y) < f(y) + 1
#:   holds, so it is a violation with a zero gradient, yet a reset;
#: * ``previous``: the rival is the (K−1)-th item, so the violation pushes the gold into
#:   the top K − 1 with a real gradient.
GOLD_KTH = ("self", "previous")


@dataclass
class SearchResult:
    """What the training search found, per sentence b and step t (B × T)."""

    violation: Tensor  # bool: margin violated at step t (including the last step)
    reset: Tensor  # bool: beam reset to the gold prefix after step t (violation before the last step)
    delta: Tensor  # float: Δ at violation steps, 0 elsewhere
    violating_tokens: Tensor  # long: the violating path's token at each step (gold outside violating segments)
    gold_scores: Tensor  # float: f(y_t) during the search
    rival_scores: Tensor  # float: f(ŷ^(K)_t), or the best incorrect at the last step
    beam_size: int
    segment_start: Tensor = None  # long: first step of the segment that step t belongs to (after the last reset)
    score: str = "logit"  # the score f the search ranked by (see SCORES)
    gold_step: Tensor = None  # long: the step of the gold score step t compares with (t; T for a finished rival);
    # bso_search always sets it (the default only keeps the dataclass's field order)


#: Decoder dropout during the two passes:
#:
#: * ``off``: the decoder runs without dropout in the search and the re-scoring (the same
#:   network in both, trivially); the encoder keeps its dropout;
#: * ``shared``: the decoder keeps its dropout, with masks that the search and the re-scoring
#:   share (:class:`SharedDropout`), so a detected violation is still a real one.
DROPOUT = ("off", "shared")


@contextmanager
def decoder_mode(decoder: nn.Module, training: bool):
    """The decoder in training or eval mode, without attention weights (not needed here);
    both restored afterwards."""
    was_training = decoder.training
    need_attn = getattr(decoder, "need_attn", None)
    decoder.train(training)
    if need_attn is not None:
        decoder.need_attn = False
    try:
        yield
    finally:
        decoder.train(was_training)
        if need_attn is not None:
            decoder.need_attn = need_attn


@contextmanager
def deterministic_decoder(decoder: nn.Module):
    """Decoder dropout off, so that the search and the re-scoring see the same network.

    The encoder keeps its dropout: it runs once, and both passes share its output.
    LSTM attention weights (returned in eval mode) are not needed here.
    """
    with decoder_mode(decoder, training=False):
        yield


class SharedDropout:
    """The ``dropout="shared"`` step: decoder dropout masks shared by the search and the re-scoring.

    Each of the decoder's dropout modules (fairseq's ``FairseqDropout``), at decoder step t and
    its c-th dropout call within the step, applies one mask per *sentence*, drawn the first time
    (sentence, t, c) comes up and reused whenever it comes back.  All beam rows of a sentence at
    step t share the mask, in the search (its live rows) and in the re-scoring (the gold and the
    violating row), so both passes compute the same scores, as they must.  This is the scheme of
    the authors' Lua code (``SynchedDropout.lua``, ``bso_train.lua``): one noise tensor per
    (time step, layer) and batch row, drawn once per minibatch, which the gold pass, the beam
    (each beam row of a sentence uses its sentence's noise) and the re-run violating pass all
    read.  Difference: their masks sit between the stacked LSTM layers only; here every dropout
    module of fairseq's decoder keeps its place (input embeddings, each layer's output, the
    attention output, ``additional_fc``).  Masks are ``bernoulli(1 − p) / (1 − p)`` from torch's
    global generator (fairseq seeds it per update), so the decoder sees ordinary inverted dropout.

    Supported decoders: fairseq's ``LSTMDecoder`` (its dropout inputs are batch-first at every
    incremental step).  The Transformer's attention dropout acts on (rows × heads, …) tensors,
    which this step does not map to sentences: it is refused with a clear error.
    """

    def __init__(self, decoder: nn.Module, n_sentences: int):
        from fairseq.models.lstm import LSTMDecoder
        from fairseq.modules import FairseqDropout

        if not isinstance(decoder, LSTMDecoder):
            raise ValueError(f"--bso-dropout shared supports fairseq's LSTMDecoder (batch-first dropout inputs); "
                             f"{type(decoder).__name__} is not one: use --bso-dropout off")
        self.decoder = decoder
        self.modules = [m for m in decoder.modules() if isinstance(m, FairseqDropout) and m.p > 0]
        self.n_sentences = n_sentences
        self.masks: dict = {}
        self.step = 0
        self.call = 0
        self.row_sentence: Optional[Tensor] = None

    def begin_step(self, step: int, row_sentence: Tensor) -> None:
        """Decoder step ``step`` runs rows that belong to the sentences ``row_sentence``."""
        self.step, self.call, self.row_sentence = step, 0, row_sentence

    def mask(self, key, p: float, like: Tensor) -> Tensor:
        """The (n_sentences, …) mask of ``key`` = (step, call), drawn on first use."""
        mask = self.masks.get(key)
        if mask is None:
            keep = 1.0 - p
            mask = like.new_empty((self.n_sentences,) + tuple(like.shape[1:])).bernoulli_(keep).div_(keep)
            self.masks[key] = mask
        return mask

    def apply(self, module, x: Tensor, inplace: bool = False) -> Tensor:
        key = (self.step, self.call)
        self.call += 1
        mask = self.mask(key, module.p, x)
        if mask.shape[1:] != x.shape[1:] or x.size(0) != self.row_sentence.numel():
            raise RuntimeError(f"shared dropout: call {key} got a {tuple(x.shape)} input for "
                               f"{self.row_sentence.numel()} rows, mask {tuple(mask.shape)}")
        return x * mask.index_select(0, self.row_sentence)

    @contextmanager
    def installed(self):
        """The decoder in training mode, its dropout modules drawing from this bank."""
        with decoder_mode(self.decoder, training=True):
            for m in self.modules:
                m.forward = lambda x, inplace=False, _m=m: self.apply(_m, x, inplace)
            try:
                yield self
            finally:
                for m in self.modules:
                    del m.forward  # the class's forward again


@contextmanager
def decoder_dropout(decoder: nn.Module, mode: str, n_sentences: int):
    """The decoder as both passes must see it (see :data:`DROPOUT`); yields the
    :class:`SharedDropout` to hand to :func:`bso_search` and :func:`rescore`, or None."""
    if mode not in DROPOUT:
        raise ValueError(f"dropout must be one of {DROPOUT}, got {mode!r}")
    if mode == "off":
        with deterministic_decoder(decoder):
            yield None
        return
    shared = SharedDropout(decoder, n_sentences)
    with shared.installed():
        yield shared


def upcast(x: Tensor) -> Tensor:
    """Half-precision scores in float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@torch.no_grad()
def bso_search(
    model,
    encoder_out,
    target: Tensor,
    beam_size: int,
    pad: int,
    eos: int,
    bos: int,
    cost: Callable[[Tensor, Tensor, Tensor], Tensor],
    margin: float = 1.0,
    constraint=None,
    src_tokens: Optional[Tensor] = None,
    score: str = "logit",
    gold_kth: str = "self",
    stop: bool = False,
    dropout: Optional[SharedDropout] = None,
) -> SearchResult:
    """Algorithm 1's forward pass for a batch: ``target`` is (B, T), right-padded, ending in ``</s>``.

    ``score`` (see :data:`SCORES`), ``gold_kth`` (see :data:`GOLD_KTH`) and ``stop`` (the
    learning-to-stop step, :func:`best_finished`) select the levers; ``dropout`` is the
    :class:`SharedDropout` bank when the decoder runs with shared dropout masks.

    Only the *live* beam items are run through the decoder: one row per sentence
    at the first step and right after a reset (every slot would hold the same gold
    prefix), none once a sentence's gold has ended, and at most K otherwise.  The
    decoder state, the encoder output and the constraint state follow the live rows
    (``reorder`` with the parent row of each new item).  The search keeps no token
    history: each beam slot records its parent slot and its token (back-pointers),
    and the violating paths are read back from them after the search.
    """
    decoder = model.decoder
    B, T = target.shape
    K = beam_size
    device = target.device
    lengths = target.ne(pad).sum(1)
    last_step = lengths - 1
    sentence = torch.arange(B, device=device)

    # the rows computed at this step: beam slot b*K + k of each live item (step 0: the empty prefix)
    row_slot = sentence * K
    enc = encoder_out
    incremental_state: dict = {}
    prev_token = target.new_full((B,), eos)  # fairseq decoders start from </s>
    only_first = torch.zeros(B, K, dtype=torch.bool, device=device)
    only_first[:, 0] = True
    gold_slot = target.new_zeros(B)  # beam slot holding the gold prefix
    segment_start = target.new_zeros(B)  # first step after the last reset
    state = constraint.initial_state(src_tokens, 1) if constraint is not None else None
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if gold_kth not in GOLD_KTH:
        raise ValueError(f"gold_kth must be one of {GOLD_KTH}, got {gold_kth!r}")
    cumulative = score == "log_softmax"
    row_prefix_score = None  # log_softmax: each row's prefix score S(ŷ_{1:t-1})
    if stop:
        internal_eos = target.eq(eos) & (torch.arange(T, device=device) < last_step.unsqueeze(1))
        if internal_eos.any():
            b = int(internal_eos.any(1).nonzero()[0])
            raise ValueError(f"the learning-to-stop step needs targets whose only </s> is the last token; "
                             f"target row {b} has an internal </s> (a literal '</s>' word in the data?)")
        gold_final = gold_final_scores(model, encoder_out, target, last_step, eos, cumulative, dropout)

    back_slot = target.new_zeros(B, T, K)  # parent slot (at t-1) of the item in slot k after step t
    back_token = target.new_zeros(B, T, K)  # its last token
    rival_item = target.new_zeros(B, T)  # the rival's index slot * V + token at its last step
    gold_step = torch.arange(T, device=device).repeat(B, 1)  # the step of the gold score each step compares with
    seg_start = target.new_zeros(B, T)  # segment_start at step t
    violation = torch.zeros(B, T, dtype=torch.bool, device=device)
    reset = torch.zeros_like(violation)
    gold_scores = rival_scores = None
    special = None
    V = None

    for t in range(T):  # the longest gold ends at T - 1, so some row is live at every step
        n_rows = row_slot.numel()
        # incremental decoders read the last token (and the prefix length): no history needed
        prev = prev_token.unsqueeze(1).expand(n_rows, t + 1)
        if dropout is not None:
            dropout.begin_step(t, torch.div(row_slot, K, rounding_mode="floor"))
        with record_function("bso.search.decoder"):
            logits = upcast(decoder(prev, encoder_out=enc, incremental_state=incremental_state)[0][:, -1, :])
        if special is None:
            V = logits.size(1)
            special = torch.tensor([pad, bos], device=device)
            gold_scores = torch.zeros(B, T, dtype=logits.dtype, device=device)
            rival_scores = torch.zeros_like(gold_scores)
            row_prefix_score = logits.new_zeros(n_rows)
        if cumulative:  # step 1 of the score: S(prefix + w) = S(prefix) + log p(w | prefix)
            logits = torch.log_softmax(logits, dim=-1) + row_prefix_score.unsqueeze(1)
        row_scores = logits.index_fill_(1, special, NEG_INF)  # <pad> and <s> are never candidates
        if constraint is not None:
            with record_function("bso.search.constraint_mask"):
                row_scores = constraint.apply_(row_scores, state)
        if stop:  # </s> before the gold's last step finishes a hypothesis: not a beam candidate
            going_on = (t < last_step).index_select(0, torch.div(row_slot, K, rounding_mode="floor"))
            row_eos = row_scores[:, eos].masked_fill(~going_on, NEG_INF)
            row_scores[:, eos].masked_fill_(going_on, NEG_INF)

        # The top K of a sentence's K·V successors are the top K of its rows' own top k:
        # no (B·K, V) score tensor.  top_idx is the flat index slot * V + token.
        k = min(K, V)
        row_top, row_token = row_scores.topk(k, dim=1)
        slot_row = row_slot.new_full((B * K,), -1)  # slot -> computed row, -1 for a dead slot
        slot_row[row_slot] = torch.arange(n_rows, device=device)
        candidates = row_top.new_full((B * K, k), NEG_INF).index_copy_(0, row_slot, row_top).view(B, K * k)
        candidate_idx = row_token.new_zeros((B * K, k)).index_copy_(
            0, row_slot, row_token + (row_slot % K).unsqueeze(1) * V).view(B, K * k)
        top_scores, top_pos = candidates.topk(K, dim=1)  # sorted, best first
        top_idx = candidate_idx.gather(1, top_pos)
        gold_idx = gold_slot * V + target[:, t]
        gold_row = slot_row[sentence * K + gold_slot]
        gold_score = row_scores[gold_row.clamp(min=0), target[:, t]]
        gold_score = gold_score.masked_fill(gold_row < 0, NEG_INF)  # a sentence whose gold has ended
        ranked_scores, ranked_idx = top_scores, top_idx  # the top K the margin check ranks the gold in
        if stop:  # finishing items leave the beam but still rank (they are the step's candidates too)
            finished_score, finished_item, ranked_scores, ranked_idx = best_finished(row_eos, row_slot, top_scores,
                                                                                     top_idx, V, eos)

        # The rival: ŷ^(K) before the last step; the best incorrect item at the last step.
        final = t == last_step
        best_incorrect = (ranked_idx[:, 0] == gold_idx).long()
        kth = torch.full_like(best_incorrect, K - 1)
        if gold_kth == "previous":  # the gold is the K-th item: the rival is the (K-1)-th instead of itself
            kth = kth - (ranked_idx[:, K - 1] == gold_idx).long()
        rival_pos = torch.where(final, best_incorrect, kth)
        rival_score = ranked_scores.gather(1, rival_pos.unsqueeze(1)).squeeze(1)
        rival_item[:, t] = ranked_idx.gather(1, rival_pos.unsqueeze(1)).squeeze(1)
        active = t <= last_step
        violated = active & (gold_score < rival_score + margin)
        compared_gold = gold_score
        if stop:  # a finished hypothesis within the margin of the gold's final score is a violation
            finished_violated = finished_score + margin > gold_final  # −inf (none) never is
            use_finished = finished_violated & (~violated | (finished_score - gold_final > rival_score - gold_score))
            rival_score = torch.where(use_finished, finished_score, rival_score)
            compared_gold = torch.where(use_finished, gold_final, gold_score)
            rival_item[:, t] = torch.where(use_finished, finished_item, rival_item[:, t])
            gold_step[:, t] = torch.where(use_finished, last_step, gold_step[:, t])
            violated = violated | finished_violated

        violation[:, t] = violated
        gold_scores[:, t] = compared_gold
        rival_scores[:, t] = rival_score
        seg_start[:, t] = segment_start
        if t == T - 1:
            break

        # Next beam: the top K, or after a violation the reset to the gold prefix y_{1:t}.
        do_reset = violated & ~final
        reset[:, t] = do_reset
        next_slot = torch.div(top_idx, V, rounding_mode="floor")
        next_token = top_idx - next_slot * V
        gold_in_top = (top_idx == gold_idx.unsqueeze(1)).long().argmax(1)
        next_slot = torch.where(do_reset.unsqueeze(1), gold_slot.unsqueeze(1), next_slot)
        next_token = torch.where(do_reset.unsqueeze(1), target[:, t : t + 1], next_token)
        live = torch.where(do_reset.unsqueeze(1), only_first, top_scores > NEG_INF)
        live &= (t + 1 <= last_step).unsqueeze(1)  # a sentence whose gold has ended leaves the search
        gold_slot = torch.where(do_reset, torch.zeros_like(gold_slot), gold_in_top)
        segment_start = torch.where(do_reset, torch.full_like(segment_start, t + 1), segment_start)
        back_slot[:, t] = next_slot
        back_token[:, t] = next_token
        if cumulative:  # the new items' prefix scores; after a reset the gold prefix's
            prefix_score = torch.where(do_reset.unsqueeze(1), gold_score.unsqueeze(1), top_scores)

        # the live items of the next step and the row each one continues
        row_slot = live.view(-1).nonzero().view(-1)
        parent_row = slot_row[(sentence.unsqueeze(1) * K + next_slot).view(-1)[row_slot]]
        prev_token = next_token.view(-1)[row_slot]
        if cumulative:
            row_prefix_score = prefix_score.reshape(-1)[row_slot]
        with record_function("bso.search.reorder"):
            decoder.reorder_incremental_state_scripting(incremental_state, parent_row)
            enc = model.encoder.reorder_encoder_out(enc, parent_row)
            if constraint is not None:
                state = constraint.step(constraint.reorder(state, parent_row), prev_token)

    with record_function("bso.search.paths_and_delta"):
        violating_tokens = violating_paths(violation, rival_item, seg_start, back_slot, back_token, target, V)
        delta = segment_costs(violation, seg_start, violating_tokens, target, cost, gold_step)
    return SearchResult(violation, reset, delta, violating_tokens, gold_scores, rival_scores, K, seg_start, score,
                        gold_step)


def gold_final_scores(model, encoder_out, target: Tensor, last_step: Tensor, eos: int, cumulative: bool,
                      dropout: Optional["SharedDropout"] = None) -> Tensor:
    """The learning-to-stop step's reference point, f_T(y) for every sentence (B,): the gold's
    score at its last step T — the raw logit of its ``</s>`` (``logit``), or its summed
    log-probability S(y_{1:T}) (``log_softmax``) — from an incremental teacher-forced pass of
    the decoder over the gold (B rows, T steps; with ``dropout`` the search's shared masks).
    The gold path does not depend on the beam, so this is the score the search meets at T."""
    decoder = model.decoder
    B, T = target.shape
    sentence = torch.arange(B, device=target.device)
    inputs = torch.cat([target.new_full((B, 1), eos), target[:, :-1]], 1)
    incremental_state: dict = {}
    final = None
    for t in range(T):
        if dropout is not None:
            dropout.begin_step(t, sentence)
        logits = upcast(decoder(inputs[:, : t + 1], encoder_out=encoder_out, incremental_state=incremental_state)[0][:, -1, :])
        if cumulative:
            logits = torch.log_softmax(logits, dim=-1)
        step = logits.gather(1, target[:, t : t + 1]).squeeze(1)
        if final is None:
            final = torch.zeros_like(step)
        if cumulative:
            final = final + step.masked_fill(t > last_step, 0.0)
        else:
            final = torch.where(last_step == t, step, final)
    return final


def best_finished(row_eos: Tensor, row_slot: Tensor, top_scores: Tensor, top_idx: Tensor, V: int, eos: int):
    """The learning-to-stop step at step t: the ``</s>`` candidates that rank in the top K of all
    the step's candidates (``top_scores``/``top_idx`` hold the top K unfinished ones, best first)
    finish.  Returns each sentence's best finished score (−inf: none) and its item (slot · V +
    ``</s>``, slot its parent's beam slot), and the top K of all the candidates, finishing ones
    included (scores and items, best first: what the margin check ranks the gold in).
    ``row_eos``: each computed row's f(``</s>``), −inf where ``</s>`` is the gold's own last
    token (not a finished rival)."""
    B, K = top_scores.shape
    eos_cand = top_scores.new_full((B * K,), NEG_INF).index_copy_(0, row_slot, row_eos).view(B, K)
    eos_idx = torch.arange(K, device=top_idx.device).mul_(V).add_(eos).expand(B, K)
    ranked_scores, pos = torch.cat([top_scores, eos_cand], 1).topk(K, dim=1)  # the top K of all candidates
    ranked_idx = torch.cat([top_idx, eos_idx], 1).gather(1, pos)
    in_top = torch.zeros(B, 2 * K, dtype=torch.bool, device=pos.device).scatter_(1, pos, True)[:, K:]
    best, best_slot = eos_cand.masked_fill(~in_top, NEG_INF).max(1)
    return best, best_slot * V + eos, ranked_scores, ranked_idx


def violating_paths(violation: Tensor, rival_item: Tensor, seg_start: Tensor, back_slot: Tensor,
                    back_token: Tensor, target: Tensor, V: int) -> Tensor:
    """The violating path: the gold, except in each violating segment the rival's tokens,
    read from the back-pointers (one vectorized pass over the steps, for all violations)."""
    tokens = target.clone()
    b, t = violation.nonzero(as_tuple=True)
    if b.numel() == 0:
        return tokens
    item = rival_item[b, t]
    slot = torch.div(item, V, rounding_mode="floor")  # the rival's parent slot at step t - 1
    tokens[b, t] = item - slot * V
    start = seg_start[b, t]
    for j in range(int(t.max().item()) - 1, -1, -1):
        inside = (t > j) & (start <= j)
        if not inside.any():
            continue
        tokens[b[inside], j] = back_token[b, j, slot][inside]
        slot = torch.where(inside, back_slot[b, j, slot], slot)
    return tokens


def segment_costs(violation: Tensor, segment_start: Tensor, violating_tokens: Tensor, target: Tensor,
                  cost: Callable[..., Tensor], gold_step: Optional[Tensor] = None) -> Tensor:
    """Δ for every violation at once: its segment runs from ``segment_start`` at the violation
    step (the step after the previous reset, or 0) to the violation step (for the gold: to
    ``gold_step``, the gold's last step when the rival is a finished hypothesis)."""
    B, T = violation.shape
    delta = torch.zeros(B, T, device=target.device)
    b_idx, t_idx = violation.nonzero(as_tuple=True)
    if b_idx.numel() == 0:
        return delta
    steps = torch.arange(T, device=target.device).unsqueeze(0)
    start = segment_start[b_idx, t_idx].unsqueeze(1)
    gold_end = t_idx if gold_step is None else gold_step[b_idx, t_idx]
    gold_mask = (steps >= start) & (steps <= gold_end.unsqueeze(1))
    mask = (steps >= start) & (steps <= t_idx.unsqueeze(1))
    delta[b_idx, t_idx] = cost(violating_tokens[b_idx], target[b_idx], mask, gold_mask).to(delta.dtype)
    return delta


def output_projection(decoder):
    """(weight, bias) of the decoder's output layer, or None when it is not a plain projection."""
    if getattr(decoder, "adaptive_softmax", None) is not None:
        return None
    proj = getattr(decoder, "output_projection", None)  # TransformerDecoder
    if isinstance(proj, nn.Linear):
        return proj.weight, proj.bias
    if hasattr(decoder, "share_input_output_embed"):  # LSTMDecoder
        if decoder.share_input_output_embed:
            return decoder.embed_tokens.weight, None
        fc_out = getattr(decoder, "fc_out", None)
        if isinstance(fc_out, nn.Linear):
            return fc_out.weight, fc_out.bias
    return None


def gathered_logits(decoder, features: Tensor, tokens: Tensor) -> Tensor:
    """f(tokens | features): the logits of the given tokens only, (N,) from (N, D) and (N,)."""
    proj = output_projection(decoder)
    if proj is None:  # any other output layer: compute all logits, keep the ones needed
        return decoder.output_layer(features.unsqueeze(1)).squeeze(1).gather(1, tokens.unsqueeze(1)).squeeze(1)
    weight, bias = proj
    logits = (features * weight.index_select(0, tokens)).sum(-1)
    if bias is not None:
        logits = logits + bias.index_select(0, tokens)
    return logits


@dataclass
class Rescored:
    """Scores under autograd, (B, T) each: the gold path's and the violating path's step
    scores (raw logits, or log-probabilities when ``score="log_softmax"``), and the gold
    path's log-probabilities when the NLL term needs them (else None)."""

    gold: Tensor
    violating: Tensor
    gold_lprobs: Optional[Tensor] = None


def rescore(model, encoder_out, target: Tensor, result: SearchResult, pad: int, eos: int,
            nll: bool = False, dropout: Optional[SharedDropout] = None) -> Rescored:
    """The gold path and the violating path, re-scored under autograd (2 rows per sentence
    with a violation, up to the batch's last violation step).

    The violating row follows ``result.violating_tokens`` and, after each reset,
    continues from the gold row's state and the gold token.  With ``result.score ==
    "logit"`` only the two logits the loss needs are computed (rows of the output
    projection, no softmax); with ``"log_softmax"`` the full output layer.  ``nll``
    also returns the gold path's log-probabilities at every step (the NLL term).  ``dropout``:
    the search's :class:`SharedDropout` bank (the same masks, sentence by sentence).
    """
    decoder = model.decoder
    B_all, T = target.shape
    device = target.device
    # Only sentences with a violation carry margin terms: the others are not re-scored (all are
    # with the NLL term).  With no violation at all, one sentence for one step keeps the loss on
    # the graph (fairseq calls backward on it).
    if nll:
        keep = torch.arange(B_all, device=device)
    else:
        keep = result.violation.any(1).nonzero().view(-1)
        if keep.numel() == 0:
            keep = keep.new_zeros(1)
    target = target.index_select(0, keep)
    violating_tokens = result.violating_tokens.index_select(0, keep)
    reset = result.reset.index_select(0, keep)
    violation = result.violation.index_select(0, keep)
    B = keep.numel()
    enc = model.encoder.reorder_encoder_out(encoder_out, keep.repeat(2))
    scored = torch.cat([target, violating_tokens], 0)  # the token each row scores at t
    # inputs: </s> then the previous token; after a reset the violating row takes the gold token
    prev_violating = torch.where(reset, target, violating_tokens)
    inputs = torch.cat([target.new_full((2 * B, 1), eos), torch.cat([target, prev_violating], 0)], 1)[:, :T]
    incremental_state: dict = {}
    reset_steps = reset.any(0).nonzero().view(-1).tolist()
    reset_rows = {}
    for t in reset_steps:  # splice the violating row onto the gold row before step t + 1
        order = torch.arange(2 * B, device=device)
        idx = reset[:, t].nonzero().view(-1)
        order[B + idx] = idx
        reset_rows[t + 1] = order
    # steps after the last violation of every sentence carry no margin loss (a finished rival's
    # term reads the gold's score at its last step)
    gold_step = result.gold_step.index_select(0, keep)
    needed = int(gold_step[violation].max().item()) + 1 if violation.any() else 1
    if nll:
        needed = T
    cumulative = result.score == "log_softmax"
    row_sentence = keep.repeat(2)  # the sentence of each re-scored row (shared dropout masks)
    scores, gold_lprobs = [], []
    for t in range(needed):
        if t in reset_rows:
            decoder.reorder_incremental_state_scripting(incremental_state, reset_rows[t])
        if dropout is not None:
            dropout.begin_step(t, row_sentence)
        features = decoder.extract_features(inputs[:, : t + 1], encoder_out=enc, incremental_state=incremental_state)[0]
        features = features[:, -1, :]
        if cumulative:
            lprobs = torch.log_softmax(upcast(decoder.output_layer(features)), dim=-1)
            scores.append(lprobs.gather(1, scored[:, t : t + 1]).squeeze(1))
            if nll:
                gold_lprobs.append(scores[-1][:B])
        else:
            scores.append(gathered_logits(decoder, features, scored[:, t]))
            if nll:
                lprobs = torch.log_softmax(upcast(decoder.output_layer(features[:B])), dim=-1)
                gold_lprobs.append(lprobs.gather(1, target[:, t : t + 1]).squeeze(1))
    f = upcast(torch.stack(scores, 1))
    f = torch.cat([f, f.new_zeros(2 * B, T - needed)], 1)
    if B == B_all:  # every sentence (in order)
        return Rescored(f[:B], f[B:], torch.stack(gold_lprobs, 1) if nll else None)
    full = f.new_zeros(B_all, T)
    return Rescored(full.index_copy(0, keep, f[:B]), full.index_copy(0, keep, f[B:]), None)


def segment_sums(step_scores: Tensor, segment_start: Tensor, end: Optional[Tensor] = None) -> Tensor:
    """Σ_{j=s..e} step_scores[:, j] for every t, s = ``segment_start[:, t]`` and e = ``end[:, t]``
    (t itself without ``end``), from cumulative sums."""
    cum = step_scores.cumsum(1)
    before = torch.cat([cum.new_zeros(cum.size(0), 1), cum], 1).gather(1, segment_start)
    return (cum if end is None else cum.gather(1, end)) - before


def bso_loss(gold: Tensor, violating: Tensor, result: SearchResult, margin: float = 1.0) -> Tensor:
    """Σ over violation steps of Δ · [margin − f(y) + f(ŷ)] (summed over the batch).

    ``logit``: f is the step's logit.  ``log_softmax``: f is the segment's summed
    log-probability (the prefixes before the segment are the same gold prefix and cancel).
    The gold's side is read at ``result.gold_step`` (the violation step, or the gold's last
    step when the rival is a hypothesis that finished at t: the learning-to-stop step).
    """
    if result.score == "log_softmax":
        gold = segment_sums(gold, result.segment_start, result.gold_step)
        violating = segment_sums(violating, result.segment_start)
    else:  # a finished rival is compared with the gold's last step
        gold = gold.gather(1, result.gold_step)
    terms = result.delta * (margin - gold + violating)
    return torch.where(result.violation, terms, torch.zeros_like(terms)).sum()


def nll_loss(gold_lprobs: Tensor, target: Tensor, pad: int) -> Tensor:
    """The NLL term: −Σ log p(y_t | y_<t) over the gold tokens of the batch (the decoder
    without dropout, as in the re-scoring pass it comes from)."""
    return -gold_lprobs.masked_fill(target.eq(pad), 0.0).sum()
