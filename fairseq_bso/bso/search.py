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

1. :func:`bso_search` runs the search without autograd over the B·K beam slots at
   once (:data:`COMPACT`): on an accelerator every slot every step, the dead ones
   computed and masked to −inf rather than compacted away, so that the loop never
   reads a tensor back to the host (the number of host-device synchronizations of a
   batch does not grow with T); on a CPU the live slots only, read from host memory
   once per step (no device to wait for, and no work for dead slots).  The
   gold prefix is always on the beam (it either never fell off or the beam was just
   reset to it), so no separate gold row is searched: a reset is a beam reorder in
   which every row of the sentence copies the gold row, followed by the gold token.
   It records the violation steps, the resets, Δ, and the tokens of the violating
   path.  The loop body is Algorithm 1's steps as named functions over a
   :class:`BeamState`: :func:`score_candidates`, :func:`rank_candidates`,
   :func:`pick_rival`, :func:`check_violation` (with the learning-to-stop step),
   :func:`next_beam`.
2. :func:`rescore` scores, under autograd, the gold path and the violating paths in one of
   three ways that give the same scores (:data:`RESCORE_MODES`):

   * *one teacher-forced parallel pass* (:func:`rescore_parallel`): one row per sentence for
     the gold, one row per violation (the gold prefix up to the segment's start, then the
     beam's continuation up to the violation step), ``extract_features`` over whole rows: an
     autoregressive decoder's score of y_t depends on the prefix only, so the pass gives
     exactly the scores the search computed incrementally;
   * *one packed pass* (:func:`rescore_packed`, Transformer decoders): one row of 2T positions
     per sentence, the gold then the violating path, under an attention mask that gives each
     violating segment the gold prefix before its reset and its own tokens (a sentence's
     segments are disjoint, so one row holds them all);
   * *T incremental steps over 2·B rows* (:func:`rescore_incremental`): the gold row and one
     violating row per sentence, whose decoder state is spliced from the gold row after each
     reset (``reorder_incremental_state`` at every step, so that no reset is read back).

   ``auto`` (the criterion's) takes the parallel pass when the batch has at most B
   violations, so its rows never exceed 2·B, and otherwise the packed pass for a Transformer
   decoder and the incremental steps for any other (the LSTM's).  Saved-for-backward memory is
   then about one teacher-forced pass over 2·B rows whatever the number of violations
   (``benchmarks/gpu_readiness.py``, a 2-layer d = 128 Transformer, 8 sentences, one violation
   per step: 60 MiB at T = 128 against 45 MiB for one pass; the LSTM 22 vs 21 MiB); the
   Transformer's incremental steps, which ``auto`` no longer takes, grow with T² (each step
   saves its cached keys and values again: 301 MiB).  Only the logits the loss uses are
   computed (rows of the output projection) with the ``logit`` score; the ``log_softmax``
   score needs the full output layer at the gold's positions and at the violating segments'.

Learning to stop (optional, ``stop=True``; after Ma, Zheng and Huang, NAACL 2019).  The
paper's search treats ``</s>`` as an ordinary token and never compares hypotheses of
different lengths, while a decoder that finalizes at ``</s>`` (fairseq's generator, and
``--bso-decoding``) picks the best finished hypothesis across lengths.  With ``stop`` the
training search does what the generator does, as a named step (:func:`best_finished`):

* at step 0 no hypothesis finishes: the empty hypothesis ``</s>`` is neither a finished rival nor
  a beam item (fairseq's generator forbids ``</s>`` at step 0, ``--min-len`` 1), unless the gold
  itself is the one-token ``</s>``;
* at a step t ≥ 1 before the gold's last step, an item ending in ``</s>`` that ranks in the top K
  of the step's candidates *finishes*: it leaves the beam, and the beam holds the top K
  unfinished items (the generator keeps K active hypotheses the same way); the margin check
  at t still compares the gold with the K-th of *all* the step's candidates, finishing ones
  included (in fairseq's generator K finished hypotheses end the search, so one that finishes
  above the gold competes with it at its step, as in the paper's search);
* the decoder will compare a finished hypothesis with the gold's *final* score, so that is
  what training compares it with, at the step where it finishes, *as the decoder ranks
  finished hypotheses*: the best hypothesis ŷ finishing at t is a violation when
  g(ŷ) + 1 > g(y), with g the decoder's ranking score of a finished hypothesis and y the whole
  gold (:func:`gold_final_scores`, a teacher-forced pass over the gold before the search: the
  gold path does not depend on the beam).  With ``logit`` (decoded by ``--bso-decoding``,
  which does not normalize), g is the raw logit of the final ``</s>``, f_T(y) and f_t(ŷ).  With
  ``log_softmax`` (decoded by fairseq's standard beam, which ranks finished hypotheses by
  ``S / len^lenpen``, len counting the ``</s>``), g(ŷ) = S(ŷ_{1:t+1}) / (t+1)^α and
  g(y) = S(y_{1:T}) / T^α with α = ``lenpen`` (``--bso-lenpen``, set it to the ``--lenpen`` you
  decode with; fairseq's default is 1).  Normalized scores of different lengths do not share
  the gold prefix's terms, so the whole sums enter the loss term Δ·[1 − g(y) + g(ŷ)] (the
  gradient reaches the shared gold prefix too).  Δ compares ŷ's segment (to t) with the
  gold's (to T).  Like any violation it resets the beam to the gold prefix y_{1:t} (so each violating
  segment keeps a single path).  When step t also has an ordinary violation, the one with the
  larger rival-minus-gold gap is the step's violation (the ordinary one on a tie);
* at the gold's last step the rival is the paper's best incorrect item.
* Where this differs from Ma et al.: only the abstract and introduction of their paper were
  available to read here.  They also propose a new ranking with a stopping criterion for
  decoding; this step changes training only (``--bso-decoding`` is fairseq's generator: it
  stops when K hypotheses have finished and returns the best f(``</s>``); fairseq's standard
  beam, used with the ``log_softmax`` score, compares finished hypotheses by length-normalized
  scores, which this step models as above).  Their monotone score (which makes an optimal
  stopping rule exact) is not implemented.  Their loss penalizes suboptimal finished
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
a reset, or when fewer than K successors exist, e.g. K ≥ vocabulary) scores −inf
(its row is still computed, then masked);
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

#: Which slots the search runs through the decoder at each step (:func:`bso_search`'s ``compact``):
#:
#: * ``"cpu"`` (default): the live slots only on a CPU, all B·K slots elsewhere;
#: * ``"always"``: the live slots only.  On an accelerator each step then reads the live slots back
#:   to the host (a synchronization per step), and a CPU computes only what it uses: after a reset
#:   a sentence has one live slot instead of K, and a sentence whose gold has ended none, which
#:   made the fixed shape 1.7x slower per BSO update at K = 6 on this CPU
#:   (``benchmarks/results/bso_speed.json``);
#: * ``"never"``: all B·K slots at every step, dead ones masked to −inf: a fixed shape and no
#:   per-step host read (``tests/test_host_syncs.py`` counts this route, the one a GPU takes).
COMPACT = "cpu"


@dataclass
class SearchResult:
    """What the training search found, per sentence b and step t (B × T)."""

    violation: Tensor  # bool: margin violated at step t (including the last step)
    reset: Tensor  # bool: beam reset to the gold prefix after step t (violation before the last step)
    delta: Tensor  # float: Δ at violation steps, 0 elsewhere
    violating_tokens: Tensor  # long: the violating path's token at each step (gold outside violating segments)
    gold_scores: Tensor  # float: the gold's compared score (f(y_t); a finished rival's: g(y), see the module doc)
    rival_scores: Tensor  # float: f(ŷ^(K)_t), the best incorrect at the last step, or a finished rival's g(ŷ)
    beam_size: int
    segment_start: Tensor = None  # long: first step of the segment that step t belongs to (after the last reset)
    score: str = "logit"  # the score f the search ranked by (see SCORES)
    gold_step: Tensor = None  # long: the step of the gold score step t compares with (t; T for a finished rival);
    # bso_search always sets it (the default only keeps the dataclass's field order)
    lenpen: float = 1.0  # α of a finished rival's length normalization (log_softmax with learning to stop)
    violation_index: Tensor = None  # (N, 2) long: the (b, t) of every violation, ``violation.nonzero()``

    def violations(self) -> Tensor:
        """(N, 2): the (sentence, step) of every violation (read back once per batch)."""
        if self.violation_index is None:
            self.violation_index = self.violation.nonzero()
        return self.violation_index


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

    Each of the decoder's dropout modules (fairseq's ``FairseqDropout``), at decoder position t and
    its c-th dropout call for that position, applies one mask per *sentence*, drawn the first time
    (sentence, t, c) comes up and reused whenever it comes back.  All beam rows of a sentence at
    step t share the mask, in the search (its beam rows, one incremental step at a time) and in
    the re-scoring (the gold and the violating rows, in one teacher-forced pass over all
    positions), so both passes compute the same scores, as they must.  This is the scheme of
    the authors' Lua code (``SynchedDropout.lua``, ``bso_train.lua``): one noise tensor per
    (time step, layer) and batch row, drawn once per minibatch, which the gold pass, the beam
    (each beam row of a sentence uses its sentence's noise) and the re-run violating pass all
    read.  Difference: their masks sit between the stacked LSTM layers only; here every dropout
    module of fairseq's decoder keeps its place (input embeddings, each layer's output, the
    attention output, ``additional_fc``).  Masks are ``bernoulli(1 − p) / (1 − p)`` from torch's
    global generator (fairseq seeds it per update), so the decoder sees ordinary inverted dropout.

    Call numbering c of position t (fairseq's ``LSTMDecoder`` order): 0 the input embedding
    (``dropout_in_module``), 1..n the n layers' outputs, n + 1 the attention output, n + 2
    ``additional_fc``'s output (``dropout_out_module``).  An incremental step makes these calls
    for one position; a teacher-forced pass makes call 0 for all L positions at once, then
    calls 1..n + 1 position by position, then call n + 2 for all positions at once
    (:meth:`begin_pass`): masks are cut and concatenated accordingly.

    Supported decoders: fairseq's ``LSTMDecoder`` (its dropout inputs are batch-first).  The
    Transformer's attention dropout acts on (rows × heads, …) tensors, which this step does not
    map to sentences: it is refused with a clear error.
    """

    def __init__(self, decoder: nn.Module, n_sentences: int):
        from fairseq.models.lstm import LSTMDecoder
        from fairseq.modules import FairseqDropout

        if not isinstance(decoder, LSTMDecoder):
            raise ValueError(f"--bso-dropout shared supports fairseq's LSTMDecoder (batch-first dropout inputs); "
                             f"{type(decoder).__name__} is not one: use --bso-dropout off")
        self.decoder = decoder
        self.modules = [m for m in decoder.modules() if isinstance(m, FairseqDropout) and m.p > 0]
        self.input_module = decoder.dropout_in_module
        self.n_layers = len(decoder.layers)
        self.n_sentences = n_sentences
        self.masks: dict = {}
        self.step = 0
        self.out_calls = 0
        self.length: Optional[int] = None  # positions of a teacher-forced pass; None: one incremental step
        self.row_sentence: Optional[Tensor] = None

    def begin_step(self, step: int, row_sentence: Tensor) -> None:
        """Incremental decoder step ``step`` runs rows that belong to the sentences ``row_sentence``."""
        self.step, self.out_calls, self.length, self.row_sentence = step, 0, None, row_sentence

    def begin_pass(self, length: int, row_sentence: Tensor) -> None:
        """A teacher-forced pass over positions 0..length-1 of rows of the sentences ``row_sentence``."""
        self.step, self.out_calls, self.length, self.row_sentence = 0, 0, length, row_sentence

    def mask(self, key, p: float, tail) -> Tensor:
        """The (n_sentences, *tail) mask of ``key`` = (position, call), drawn on first use."""
        mask = self.masks.get(key)
        if mask is None:
            keep = 1.0 - p
            ref = self.decoder.embed_tokens.weight
            mask = ref.new_empty((self.n_sentences,) + tuple(tail)).bernoulli_(keep).div_(keep)
            self.masks[key] = mask
        return mask

    def position_masks(self, call: int, p: float, x: Tensor) -> Tensor:
        """(n_sentences, L, D): the masks of ``call`` at positions 0..L-1, side by side (a pass's
        call over all positions at once, x (rows, L, D))."""
        return torch.cat([self.mask((j, call), p, (1, x.size(2))) for j in range(self.length)], 1)

    def apply(self, module, x: Tensor, inplace: bool = False) -> Tensor:
        if self.length is None:  # one incremental step: position self.step
            if module is self.input_module:
                call = 0
            else:
                self.out_calls += 1
                call = self.out_calls
            key = (self.step, call)
            mask = self.mask(key, module.p, x.shape[1:])
        elif module is self.input_module:  # a pass: every position's input embedding
            key = ("pass", 0)
            mask = self.position_masks(0, module.p, x)
        else:
            q = self.out_calls
            self.out_calls += 1
            per_position = self.n_layers + 1
            if q < self.length * per_position:  # position j's layer outputs and attention output
                j, c = divmod(q, per_position)
                key = (j, 1 + c)
                mask = self.mask(key, module.p, x.shape[1:])
            else:  # additional_fc's output, every position
                key = ("pass", self.n_layers + 2)
                mask = self.position_masks(self.n_layers + 2, module.p, x)
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


def teacher_forced_features(decoder, encoder_out, tokens: Tensor, eos: int,
                            dropout: Optional[SharedDropout] = None, row_sentence: Optional[Tensor] = None) -> Tensor:
    """The decoder's features (N, L, D) at every position of the rows ``tokens`` (N, L), in one
    teacher-forced pass (inputs ``</s>`` then the row's previous tokens); with ``dropout`` the
    rows use the masks of their sentences ``row_sentence``."""
    prev = torch.cat([tokens.new_full((tokens.size(0), 1), eos), tokens[:, :-1]], 1)
    if dropout is not None:
        dropout.begin_pass(tokens.size(1), row_sentence)
    return decoder.extract_features(prev, encoder_out=encoder_out)[0]


def token_scores(decoder, features: Tensor, tokens: Tensor, log_softmax: bool) -> Tensor:
    """The score of each token given its features, (N,) from (N, D) and (N,): its raw logit (rows
    of the output projection only) or its log-probability (the full output layer)."""
    if log_softmax:
        lprobs = torch.log_softmax(upcast(decoder.output_layer(features)), dim=-1)
        return lprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
    return upcast(gathered_logits(decoder, features, tokens))


# -- the search: Algorithm 1's steps -------------------------------------------------------------------------------

@dataclass
class SearchContext:
    """What stays fixed during a batch's search.  Rows are beam slots r = b·K + k (B·K rows)."""

    decoder: nn.Module
    encoder_out: object  # the encoder's output, each sentence repeated K times (compact: once per sentence)
    target: Tensor  # (B, T)
    last_step: Tensor  # (B,) the gold's last step
    K: int
    eos: int
    special: Tensor  # tokens never proposed: <pad>, <s>
    margin: float
    cumulative: bool  # the log_softmax score
    gold_kth: str
    stop: bool
    lenpen: float
    constraint: object
    dropout: Optional[SharedDropout]
    sentence: Tensor  # (B,) arange
    row_sentence: Tensor  # (B·K,) the sentence of each row
    only_first: Tensor  # (B, K) bool: slot 0 alone
    gold_final: Optional[Tensor]  # (B,) g(y) of the whole gold (learning to stop), else None
    compact: bool = False  # run the live slots only (see :data:`COMPACT`)
    reorder_encoder_out: Optional[Callable] = None  # the encoder's, for the live slots


@dataclass
class BeamState:
    """The beam between two steps (one entry per row b·K + k, or per sentence b)."""

    prev_token: Tensor  # (B·K,) the last token of each slot's prefix (what the decoder reads next)
    live: Tensor  # (B, K) bool: the slot holds an item
    prefix_score: Tensor  # (B·K,) S of each slot's prefix (log_softmax score; zeros otherwise)
    gold_slot: Tensor  # (B,) the slot holding the gold prefix
    segment_start: Tensor  # (B,) first step after the last reset
    constraint_state: object
    incremental_state: dict
    rows: Optional[Tensor] = None  # compact: the slots b·K + k the decoder state holds, in its order (the live ones)


@dataclass
class Ranked:
    """A step's candidates ranked (B, K each, best first)."""

    top_scores: Tensor  # the next beam's candidates: the top K unfinished items
    top_idx: Tensor  # their items, slot · V + token
    ranked_scores: Tensor  # the top K the margin check ranks the gold in (finishing items included)
    ranked_idx: Tensor
    finished_score: Optional[Tensor]  # (B,) learning to stop: the best item finishing at this step (−inf: none)
    finished_item: Optional[Tensor]


def score_candidates(ctx: SearchContext, st: BeamState, t: int):
    """Step 1, score the candidates: f of every successor of every computed row, (R, V), −inf for
    dead slots, ``<pad>``, ``<s>`` and tokens the constraint forbids.  The rows are the B·K slots,
    or with ``compact`` the live slots ``st.rows`` only (R of them: :func:`slot_view` maps slots
    to rows).  With learning to stop, ``</s>`` before the gold's last step is no beam candidate:
    its scores are returned apart, (R,), as the finished hypotheses of this step (none at step 0:
    the empty hypothesis)."""
    prev, encoder_out, row_sentence = st.prev_token, ctx.encoder_out, ctx.row_sentence
    prefix_score, constraint_state = st.prefix_score, st.constraint_state
    if ctx.compact:  # the live slots only
        rows = st.rows
        prev, row_sentence = prev.index_select(0, rows), row_sentence.index_select(0, rows)
        encoder_out = ctx.reorder_encoder_out(encoder_out, row_sentence)
        if prefix_score is not None:
            prefix_score = prefix_score.index_select(0, rows)
        if ctx.constraint is not None:
            constraint_state = ctx.constraint.reorder(constraint_state, rows)
    prev = prev.unsqueeze(1).expand(-1, t + 1)  # incremental decoders read the last token only
    if ctx.dropout is not None:
        ctx.dropout.begin_step(t, row_sentence)
    with record_function("bso.search.decoder"):
        out = ctx.decoder(prev, encoder_out=encoder_out, incremental_state=st.incremental_state)[0]
    scores = upcast(out[:, -1, :])
    if ctx.cumulative:  # S(prefix + w) = S(prefix) + log p(w | prefix)
        scores = torch.log_softmax(scores, dim=-1)
        if prefix_score is not None:  # (None at step 0: the empty prefix)
            scores = scores + prefix_score.unsqueeze(1)
    scores = scores.index_fill_(1, ctx.special, NEG_INF)
    if not ctx.compact:  # every computed row is live otherwise
        scores.masked_fill_(~st.live.view(-1, 1), NEG_INF)
    if ctx.constraint is not None:
        with record_function("bso.search.constraint_mask"):
            scores = ctx.constraint.apply_(scores, constraint_state)
    row_eos = None
    if ctx.stop:
        going_on = (t < ctx.last_step).repeat_interleave(ctx.K)
        if ctx.compact:
            going_on = going_on.index_select(0, st.rows)
        row_eos = scores[:, ctx.eos].masked_fill(~going_on, NEG_INF)
        if t == 0:  # fairseq's generator never finishes the empty hypothesis
            row_eos.fill_(NEG_INF)
        scores[:, ctx.eos].masked_fill_(going_on, NEG_INF)
    return scores, row_eos


def slot_view(ctx: SearchContext, st: BeamState, x: Tensor, fill) -> Tensor:
    """Per-row values ``x`` (R, …) of :func:`score_candidates` as per-slot values (B·K, …): with
    ``compact``, the dead slots get ``fill``; otherwise x itself."""
    if not ctx.compact:
        return x
    return x.new_full((ctx.row_sentence.numel(),) + tuple(x.shape[1:]), fill).index_copy_(0, st.rows, x)


def row_of_slot(ctx: SearchContext, st: BeamState) -> Tensor:
    """(B·K,) with ``compact``: each slot's place in ``st.rows`` (the rows of this step's scores and of
    the decoder's state), −1 for a dead slot."""
    return torch.full_like(ctx.row_sentence, -1).index_copy_(0, st.rows, torch.arange(
        st.rows.numel(), device=st.rows.device))


def slot_scores(ctx: SearchContext, st: BeamState, scores: Tensor, slots: Tensor, tokens: Tensor) -> Tensor:
    """(B,) the scores of ``tokens`` after the items in ``slots`` (B,) (one per sentence), −inf for
    a dead slot (a sentence whose gold has ended)."""
    slot = ctx.sentence * ctx.K + slots
    if not ctx.compact:
        return scores[slot, tokens]
    row = row_of_slot(ctx, st).index_select(0, slot)
    return scores[row.clamp(min=0), tokens].masked_fill(row < 0, NEG_INF)


def rank_candidates(ctx: SearchContext, st: BeamState, scores: Tensor, row_eos: Optional[Tensor]) -> Ranked:
    """Step 2, rank: the top K of a sentence's K·V successors are the top K of its rows' own top k
    (no (B, K·V) tensor); with learning to stop, the finishing items that rank among all the
    step's candidates (:func:`best_finished`)."""
    B, K = ctx.sentence.numel(), ctx.K
    V = scores.size(1)
    row_top, row_token = scores.topk(min(K, V), dim=1)
    row_top, row_token = slot_view(ctx, st, row_top, NEG_INF), slot_view(ctx, st, row_token, 0)
    if row_eos is not None:
        row_eos = slot_view(ctx, st, row_eos, NEG_INF)
    slot = torch.arange(K, device=scores.device).repeat(B)
    candidates = row_top.view(B, -1)
    candidate_idx = (row_token + (slot * V).unsqueeze(1)).view(B, -1)
    top_scores, top_pos = candidates.topk(K, dim=1)  # sorted, best first
    top_idx = candidate_idx.gather(1, top_pos)
    if not ctx.stop:
        return Ranked(top_scores, top_idx, top_scores, top_idx, None, None)
    finished_score, finished_item, ranked_scores, ranked_idx = best_finished(row_eos, top_scores, top_idx, V, ctx.eos)
    return Ranked(top_scores, top_idx, ranked_scores, ranked_idx, finished_score, finished_item)


def pick_rival(ctx: SearchContext, ranked: Ranked, gold_idx: Tensor, t: int):
    """Step 3, the rival: ŷ^(K) before the gold's last step (the (K−1)-th when the gold is K-th and
    ``gold_kth="previous"``); the best incorrect item at the last step.  (B,) score and item."""
    final = t == ctx.last_step
    best_incorrect = (ranked.ranked_idx[:, 0] == gold_idx).long()
    kth = torch.full_like(best_incorrect, ctx.K - 1)
    if ctx.gold_kth == "previous":
        kth = kth - (ranked.ranked_idx[:, ctx.K - 1] == gold_idx).long()
    pos = torch.where(final, best_incorrect, kth).unsqueeze(1)
    return ranked.ranked_scores.gather(1, pos).squeeze(1), ranked.ranked_idx.gather(1, pos).squeeze(1)


def check_violation(ctx: SearchContext, t: int, gold_score: Tensor, rival_score: Tensor, rival_item: Tensor,
                    ranked: Ranked):
    """Step 4, violation (and learning to stop): the gold does not beat the rival by the margin.
    With learning to stop, the best hypothesis finishing at t is a violation when its ranking
    score g(ŷ) comes within the margin of the whole gold's g(y); when the step has both, the
    larger rival-minus-gold gap is the step's violation (the ordinary one on a tie).
    Returns (violated, compared gold score, rival score, rival item, gold step), (B,) each."""
    active = t <= ctx.last_step
    violated = active & (gold_score < rival_score + ctx.margin)
    gold_step = torch.full_like(ctx.last_step, t)
    if not ctx.stop:
        return violated, gold_score, rival_score, rival_item, gold_step
    finished = ranked.finished_score
    if ctx.cumulative:  # fairseq's standard beam ranks a finished hypothesis by S / len^lenpen
        finished = finished / float(t + 1) ** ctx.lenpen
    finished_violated = finished + ctx.margin > ctx.gold_final  # −inf (none) never is
    use_finished = finished_violated & (~violated | (finished - ctx.gold_final > rival_score - gold_score))
    return (violated | finished_violated, torch.where(use_finished, ctx.gold_final, gold_score),
            torch.where(use_finished, finished, rival_score), torch.where(use_finished, ranked.finished_item, rival_item),
            torch.where(use_finished, ctx.last_step, gold_step))


def next_beam(ctx: SearchContext, st: BeamState, t: int, ranked: Ranked, gold_idx: Tensor, gold_score: Tensor,
              do_reset: Tensor, V: int):
    """Step 5, the next beam: the top K, or after a violation the reset to the gold prefix y_{1:t}
    (LaSO).  Updates ``st``, reorders the decoder's and the constraint's state to the new slots'
    parents, and returns the back-pointers (B, K): each slot's parent slot and token."""
    K = ctx.K
    reset_col = do_reset.unsqueeze(1)
    next_slot = torch.div(ranked.top_idx, V, rounding_mode="floor")
    next_token = ranked.top_idx - next_slot * V
    gold_in_top = (ranked.top_idx == gold_idx.unsqueeze(1)).long().argmax(1)
    next_slot = torch.where(reset_col, st.gold_slot.unsqueeze(1), next_slot)
    next_token = torch.where(reset_col, ctx.target[:, t: t + 1], next_token)
    live = torch.where(reset_col, ctx.only_first, ranked.top_scores > NEG_INF)
    st.live = live & (t + 1 <= ctx.last_step).unsqueeze(1)  # a sentence whose gold has ended leaves the search
    st.gold_slot = torch.where(do_reset, torch.zeros_like(st.gold_slot), gold_in_top)
    st.segment_start = torch.where(do_reset, torch.full_like(st.segment_start, t + 1), st.segment_start)
    if ctx.cumulative:  # the new items' prefix scores; after a reset the gold prefix's
        st.prefix_score = torch.where(reset_col, gold_score.unsqueeze(1), ranked.top_scores).reshape(-1)
    parent_row = (ctx.sentence.unsqueeze(1) * K + next_slot).view(-1)
    st.prev_token = next_token.reshape(-1)
    with record_function("bso.search.reorder"):
        if ctx.compact:  # the state holds st.rows: the new live slots' parents, by their place in it
            rows = st.live.view(-1).nonzero().squeeze(1)  # a CPU read: no device to wait for
            parent = row_of_slot(ctx, st).index_select(0, parent_row.index_select(0, rows))
            ctx.decoder.reorder_incremental_state_scripting(st.incremental_state, parent)
            st.rows = rows
        else:
            ctx.decoder.reorder_incremental_state_scripting(st.incremental_state, parent_row)
        if ctx.constraint is not None:
            st.constraint_state = ctx.constraint.step(ctx.constraint.reorder(st.constraint_state, parent_row),
                                                      st.prev_token)
    return next_slot, next_token


@torch.no_grad()
def bso_search(model, encoder_out, target: Tensor, beam_size: int, pad: int, eos: int, bos: int,
               cost: Callable[..., Tensor], *, score: str, gold_kth: str, margin: float = 1.0, stop: bool = False,
               lenpen: float = 1.0, dropout: Optional[SharedDropout] = None, constraint=None,
               src_tokens: Optional[Tensor] = None, compact: Optional[bool] = None) -> SearchResult:
    """Algorithm 1's forward pass for a batch: ``target`` is (B, T), right-padded, ending in ``</s>``.

    The levers are keyword-only: ``score`` (see :data:`SCORES`) and ``gold_kth`` (see
    :data:`GOLD_KTH`) have no default (the CLI's defaults are ``log_softmax`` and ``previous``);
    ``margin`` (1, the paper's and the criterion's), ``stop`` (the learning-to-stop step; off),
    ``lenpen`` (α of its length normalization with ``log_softmax``; fairseq's default 1) and
    ``dropout`` (the :class:`SharedDropout` bank, None: the decoder's dropout is off) default to
    the CLI's values.

    ``compact`` (None: :data:`COMPACT` decides by the device) chooses how the decoder runs: all
    B·K slots at every step, the dead ones masked to −inf (a fixed shape: no read-back of the
    number of live items, for accelerators), or the live slots only (one row per sentence right
    after a reset, none once its gold has ended: a CPU computes only what the search uses, and
    its per-step read of the live slots waits for no device).  Both give the same result.  The
    encoder output is repeated K times per sentence once; the decoder state and the constraint
    state follow the slots (``reorder`` with the parent row of each new item).  The search keeps no token history:
    each beam slot records its parent slot and its token (back-pointers), and the violating
    paths are read back from them after the search.  Host reads with the fixed shape: one (the
    violation index), plus one with ``stop`` (the internal-``</s>`` check).
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if gold_kth not in GOLD_KTH:
        raise ValueError(f"gold_kth must be one of {GOLD_KTH}, got {gold_kth!r}")
    decoder = model.decoder
    B, T = target.shape
    K = beam_size
    device = target.device
    last_step = target.ne(pad).sum(1) - 1
    sentence = torch.arange(B, device=device)
    cumulative = score == "log_softmax"
    gold_final = None
    if stop:
        internal_eos = target.eq(eos) & (torch.arange(T, device=device) < last_step.unsqueeze(1))
        if internal_eos.any():
            b = int(internal_eos.any(1).nonzero()[0])
            raise ValueError(f"the learning-to-stop step needs targets whose only </s> is the last token; "
                             f"target row {b} has an internal </s> (a literal '</s>' word in the data?)")
        gold_final = gold_final_scores(model, encoder_out, target, last_step, eos, cumulative, dropout, lenpen)
    row_sentence = sentence.repeat_interleave(K)
    only_first = torch.zeros(B, K, dtype=torch.bool, device=device)
    only_first[:, 0] = True
    if compact is None:
        if COMPACT not in ("cpu", "always", "never"):
            raise ValueError(f"fairseq_bso.bso.search.COMPACT must be 'cpu', 'always' or 'never', got {COMPACT!r}")
        compact = COMPACT == "always" or (COMPACT == "cpu" and device.type == "cpu")
    if not compact:  # every slot reads its sentence's encoder output at every step: repeat it K times once
        encoder_out = model.encoder.reorder_encoder_out(encoder_out, row_sentence)
    ctx = SearchContext(decoder, encoder_out, target, last_step, K,
                        eos, torch.tensor([pad, bos], device=device), margin, cumulative, gold_kth, stop, lenpen,
                        constraint, dropout, sentence, row_sentence, only_first, gold_final, compact,
                        model.encoder.reorder_encoder_out)
    st = BeamState(prev_token=target.new_full((B * K,), eos),  # fairseq decoders start from </s>
                   live=only_first.clone(), prefix_score=None, gold_slot=target.new_zeros(B),
                   segment_start=target.new_zeros(B),
                   constraint_state=constraint.initial_state(src_tokens, K) if constraint is not None else None,
                   incremental_state={}, rows=sentence * K if compact else None)

    back_slot = target.new_zeros(B, T, K)  # parent slot (at t-1) of the item in slot k after step t
    back_token = target.new_zeros(B, T, K)  # its last token
    rival_item = target.new_zeros(B, T)  # the rival's index slot * V + token at its last step
    gold_step = target.new_zeros(B, T)  # the step of the gold score each step compares with
    seg_start = target.new_zeros(B, T)  # segment_start at step t
    violation = torch.zeros(B, T, dtype=torch.bool, device=device)
    reset = torch.zeros_like(violation)
    gold_scores = rival_scores = None

    for t in range(T):  # the longest gold ends at T - 1, so some row is live at every step
        scores, row_eos = score_candidates(ctx, st, t)
        V = scores.size(1)
        if gold_scores is None:
            gold_scores = scores.new_zeros(B, T)
            rival_scores = torch.zeros_like(gold_scores)
        ranked = rank_candidates(ctx, st, scores, row_eos)
        gold_idx = st.gold_slot * V + target[:, t]
        gold_score = slot_scores(ctx, st, scores, st.gold_slot, target[:, t])  # −inf once the gold has ended
        rival_score, rival_item[:, t] = pick_rival(ctx, ranked, gold_idx, t)
        violated, gold_scores[:, t], rival_scores[:, t], rival_item[:, t], gold_step[:, t] = check_violation(
            ctx, t, gold_score, rival_score, rival_item[:, t], ranked)
        violation[:, t] = violated
        seg_start[:, t] = st.segment_start
        if t == T - 1:
            break
        do_reset = violated & (t != last_step)
        reset[:, t] = do_reset
        back_slot[:, t], back_token[:, t] = next_beam(ctx, st, t, ranked, gold_idx, gold_score, do_reset, V)

    with record_function("bso.search.paths_and_delta"):
        violating_tokens = violating_paths(violation, rival_item, seg_start, back_slot, back_token, target, V)
        index = violation.nonzero()  # the batch's one read-back: how many violations, where
        delta = segment_costs(violation, seg_start, violating_tokens, target, cost, gold_step, index)
    return SearchResult(violation, reset, delta, violating_tokens, gold_scores, rival_scores, K, seg_start, score,
                        gold_step, lenpen, index)


def gold_final_scores(model, encoder_out, target: Tensor, last_step: Tensor, eos: int, cumulative: bool,
                      dropout: Optional[SharedDropout] = None, lenpen: float = 1.0) -> Tensor:
    """The learning-to-stop step's reference point g(y) for every sentence (B,), as the decoder ranks
    the whole gold once finished: the raw logit of its ``</s>`` (``logit``), or its summed
    log-probability over its length T (``</s>`` included) normalized as fairseq's standard beam
    normalizes, S(y_{1:T}) / T^lenpen (``log_softmax``); from one teacher-forced pass of the
    decoder over the gold (with ``dropout`` the search's shared masks).  The gold path does not
    depend on the beam, so this is the score the search meets at T (before normalization)."""
    decoder = model.decoder
    B, T = target.shape
    sentence = torch.arange(B, device=target.device)
    features = teacher_forced_features(decoder, encoder_out, target, eos, dropout, sentence)
    if not cumulative:
        last = features[sentence, last_step]
        return upcast(gathered_logits(decoder, last, target[sentence, last_step]))
    total = features.new_zeros(B, dtype=upcast(features[:1, 0, :1]).dtype)
    for j in range(T):  # (B, V) at a time, not (B, T, V)
        step = token_scores(decoder, features[:, j], target[:, j], log_softmax=True)
        total = total + step.masked_fill(j > last_step, 0.0)
    return total / (last_step + 1).to(total.dtype).pow(lenpen)


def best_finished(row_eos: Tensor, top_scores: Tensor, top_idx: Tensor, V: int, eos: int):
    """The learning-to-stop step at step t: the ``</s>`` candidates that rank in the top K of all
    the step's candidates (``top_scores``/``top_idx`` hold the top K unfinished ones, best first)
    finish.  Returns each sentence's best finished score (−inf: none) and its item (slot · V +
    ``</s>``, slot its parent's beam slot), and the top K of all the candidates, finishing ones
    included (scores and items, best first: what the margin check ranks the gold in).
    ``row_eos``: each slot's f(``</s>``), (B·K,), −inf where ``</s>`` does not finish a hypothesis
    (a dead slot, step 0, or the gold's own last token)."""
    B, K = top_scores.shape
    eos_cand = row_eos.view(B, K)
    eos_idx = torch.arange(K, device=top_idx.device).mul_(V).add_(eos).expand(B, K)
    ranked_scores, pos = torch.cat([top_scores, eos_cand], 1).topk(K, dim=1)  # the top K of all candidates
    ranked_idx = torch.cat([top_idx, eos_idx], 1).gather(1, pos)
    in_top = torch.zeros(B, 2 * K, dtype=torch.bool, device=pos.device).scatter_(1, pos, True)[:, K:]
    best, best_slot = eos_cand.masked_fill(~in_top, NEG_INF).max(1)
    return best, best_slot * V + eos, ranked_scores, ranked_idx


def violating_paths(violation: Tensor, rival_item: Tensor, seg_start: Tensor, back_slot: Tensor,
                    back_token: Tensor, target: Tensor, V: int) -> Tensor:
    """The violating path: the gold, except in each violating segment the rival's tokens, read from
    the back-pointers.  Every (b, t) follows its own pointer (B × T at once, one pass over the
    steps, no read-back); the segments of a sentence are disjoint, so each position is written by
    at most one violation."""
    B, T = violation.shape
    slot = torch.div(rival_item, V, rounding_mode="floor")  # the rival's parent slot at step t - 1
    tokens = torch.where(violation, rival_item - slot * V, target)
    rows = torch.arange(B, device=target.device).unsqueeze(1).expand(B, T)
    steps = torch.arange(T, device=target.device)
    for j in range(T - 2, -1, -1):
        inside = violation & (steps > j) & (seg_start <= j)  # (b, t): t's segment covers j
        token = back_token[rows, j, slot]
        written = inside.any(1)
        tokens[:, j] = torch.where(written, (token * inside).sum(1), tokens[:, j])
        slot = torch.where(inside, back_slot[rows, j, slot], slot)
    return tokens


def segment_costs(violation: Tensor, segment_start: Tensor, violating_tokens: Tensor, target: Tensor,
                  cost: Callable[..., Tensor], gold_step: Optional[Tensor] = None,
                  index: Optional[Tensor] = None) -> Tensor:
    """Δ for every violation at once: its segment runs from ``segment_start`` at the violation
    step (the step after the previous reset, or 0) to the violation step (for the gold: to
    ``gold_step``, the gold's last step when the rival is a hypothesis that finished early).
    ``index``: ``violation.nonzero()`` when the caller has it."""
    B, T = violation.shape
    delta = torch.zeros(B, T, device=target.device)
    if index is None:
        index = violation.nonzero()
    b_idx, t_idx = index.unbind(1)
    if b_idx.numel() == 0:
        return delta
    steps = torch.arange(T, device=target.device).unsqueeze(0)
    start = segment_start[b_idx, t_idx].unsqueeze(1)
    gold_end = t_idx if gold_step is None else gold_step[b_idx, t_idx]
    gold_mask = (steps >= start) & (steps <= gold_end.unsqueeze(1))
    mask = (steps >= start) & (steps <= t_idx.unsqueeze(1))
    return delta.index_put((b_idx, t_idx), cost(violating_tokens[b_idx], target[b_idx], mask, gold_mask).to(delta.dtype))


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
    """Scores under autograd, (B, T) each: the gold path's step scores (raw logits, or
    log-probabilities when ``score="log_softmax"``) at every step; the violating paths' step
    scores at the steps of their violating segments (each segment's own path; 0 elsewhere); and
    the gold path's log-probabilities when the NLL term needs them (else None)."""

    gold: Tensor
    violating: Tensor
    gold_lprobs: Optional[Tensor] = None


#: How :func:`rescore` runs the decoder: ``parallel`` (one teacher-forced pass, one row per
#: violation), ``packed`` (one teacher-forced pass over one 2T-long row per sentence, the gold then
#: the violating path, under an attention mask that gives each violating segment the gold prefix
#: before it: Transformer decoders), ``incremental`` (T steps over 2·B rows, the violating row
#: spliced onto the gold row's state after each reset), or ``auto``: parallel when the batch has at
#: most B violations (then its B + N rows cost at most 2·B rows), else packed when the decoder
#: supports it (:func:`packable`), else incremental (the LSTM's steps save memory linear in T).
RESCORE_MODES = ("auto", "parallel", "packed", "incremental")


def rescore(model, encoder_out, target: Tensor, result: SearchResult, pad: int, eos: int, *,
            nll: bool = False, dropout: Optional[SharedDropout] = None, mode: str = "auto") -> Rescored:
    """The gold path and the violating paths re-scored under autograd (see :data:`RESCORE_MODES`):
    :func:`rescore_parallel`, :func:`rescore_packed` or :func:`rescore_incremental`, which compute
    the same scores."""
    if mode not in RESCORE_MODES:
        raise ValueError(f"mode must be one of {RESCORE_MODES}, got {mode!r}")
    if mode == "auto":
        n_violations = result.violations().size(0)  # known on the host once the index exists
        if n_violations <= target.size(0):
            mode = "parallel"
        else:
            mode = "packed" if dropout is None and packable(model.decoder) is None else "incremental"
    if mode == "packed":
        reason = "the shared dropout bank (LSTM only)" if dropout is not None else packable(model.decoder)
        if reason is not None:
            raise ValueError(f"packed re-scoring does not support {reason}")
    fn = {"parallel": rescore_parallel, "packed": rescore_packed, "incremental": rescore_incremental}[mode]
    return fn(model, encoder_out, target, result, pad, eos, nll=nll, dropout=dropout)


def rescore_incremental(model, encoder_out, target: Tensor, result: SearchResult, pad: int, eos: int, *,
                        nll: bool = False, dropout: Optional[SharedDropout] = None) -> Rescored:
    """The gold path and *the* violating path of every sentence (2·B rows), T incremental decoder
    steps under autograd.  The violating row follows ``result.violating_tokens`` and, after each
    reset, continues from the gold row's state and the gold token (a reorder of the decoder's
    state at every step, rows spliced where the previous step reset: no host read).  Saved
    memory: the LSTM's is linear in T; the Transformer's grows with T² (each step saves its
    cached keys and values again)."""
    decoder = model.decoder
    B, T = target.shape
    device = target.device
    enc = model.encoder.reorder_encoder_out(encoder_out, torch.arange(B, device=device).repeat(2))
    scored = torch.cat([target, result.violating_tokens], 0)  # the token each row scores at t
    # inputs: </s> then the previous token; after a reset the violating row takes the gold token
    prev_violating = torch.where(result.reset, target, result.violating_tokens)
    inputs = torch.cat([target.new_full((2 * B, 1), eos), torch.cat([target, prev_violating], 0)], 1)[:, :T]
    own = torch.arange(2 * B, device=device)
    gold_row = torch.cat([own[:B], own[:B]])
    row_sentence = gold_row
    cumulative = result.score == "log_softmax"
    incremental_state: dict = {}
    scores, gold_lprobs = [], []
    for t in range(T):
        if t > 0:  # splice the violating rows whose sentence reset after t - 1 onto their gold row
            spliced = torch.cat([result.reset.new_zeros(B), result.reset[:, t - 1]])
            decoder.reorder_incremental_state_scripting(incremental_state, torch.where(spliced, gold_row, own))
        if dropout is not None:
            dropout.begin_step(t, row_sentence)
        features = decoder.extract_features(inputs[:, : t + 1], encoder_out=enc,
                                            incremental_state=incremental_state)[0][:, -1, :]
        scores.append(token_scores(decoder, features, scored[:, t], log_softmax=cumulative))
        if nll:
            gold_lprobs.append(scores[-1][:B] if cumulative else
                               token_scores(decoder, features[:B], target[:, t], log_softmax=True))
    f = torch.stack(scores, 1)
    return Rescored(f[:B], f[B:], torch.stack(gold_lprobs, 1) if nll else None)


def rescore_parallel(model, encoder_out, target: Tensor, result: SearchResult, pad: int, eos: int, *,
                     nll: bool = False, dropout: Optional[SharedDropout] = None) -> Rescored:
    """The gold path and the violating paths, re-scored under autograd in one teacher-forced
    parallel pass of the decoder (``extract_features`` over whole rows).

    Rows: the B golds, then one row per violation (b, t) with segment start s: the gold y_{1:s}
    then the violating tokens up to t (what the search's violating item was; positions after t
    are never read).  The violating row recomputes the gold prefix itself, so the gradient of the
    segment flows into the gold prefix as it does through the search's reset.  Scores read by
    :func:`read_scores` (the gold's at every step; each violating row's at its segment's steps
    s..t with ``log_softmax``, at t with ``logit``).  ``dropout``: the search's
    :class:`SharedDropout` bank (each row its sentence's masks)."""
    decoder = model.decoder
    B, T = target.shape
    device = target.device
    index = result.violations()
    b_v, t_v = index.unbind(1)
    N = b_v.numel()
    steps = torch.arange(T, device=device)
    start_v = result.segment_start[b_v, t_v]
    violating_rows = torch.where(steps.unsqueeze(0) < start_v.unsqueeze(1), target[b_v],
                                 result.violating_tokens[b_v])
    row_sentence = torch.cat([torch.arange(B, device=device), b_v])
    enc = model.encoder.reorder_encoder_out(encoder_out, row_sentence) if N > 0 else encoder_out
    rows = torch.cat([target, violating_rows], 0)
    features = teacher_forced_features(decoder, enc, rows, eos, dropout, row_sentence)
    return read_scores(decoder, target, result, features[:B], features[B:], torch.arange(N, device=device), nll)


def read_scores(decoder, target: Tensor, result: SearchResult, gold_features: Tensor, violating_features: Tensor,
                violation_row: Tensor, nll: bool) -> Rescored:
    """The scores the loss reads, from a re-scoring pass's features: the gold's at every step, from
    ``gold_features`` (B, T, D) (the logit rows of the output projection, or the full output layer's
    log-probabilities with ``score="log_softmax"`` or ``nll``); each violation's at its segment's
    steps (``log_softmax``) or at its step (``logit``), from row ``violation_row[n]`` of
    ``violating_features`` (M, T, D) for the n-th violation of ``result.violations()``."""
    B, T = target.shape
    cumulative = result.score == "log_softmax"
    flat = gold_features.reshape(B * T, gold_features.size(-1))
    gold_lprobs = None
    if cumulative or nll:
        gold_lprobs = token_scores(decoder, flat, target.reshape(-1), log_softmax=True).view(B, T)
    gold = gold_lprobs if cumulative else upcast(gathered_logits(decoder, flat, target.reshape(-1))).view(B, T)
    violating = gold.new_zeros(B, T)
    index = result.violations()
    if index.size(0) > 0:
        b_v, t_v = index.unbind(1)
        if cumulative:  # every step of each segment: one more read-back (how many positions)
            steps = torch.arange(T, device=target.device).unsqueeze(0)
            start_v = result.segment_start[b_v, t_v].unsqueeze(1)
            i, j = ((steps >= start_v) & (steps <= t_v.unsqueeze(1))).nonzero().unbind(1)
        else:  # the violation step only
            i, j = torch.arange(index.size(0), device=target.device), t_v
        b = b_v[i]
        values = token_scores(decoder, violating_features[violation_row[i], j], result.violating_tokens[b, j],
                              log_softmax=cumulative)
        violating = violating.index_put((b, j), values.to(violating.dtype))
    return Rescored(gold, violating, gold_lprobs if nll else None)


def packable(decoder) -> Optional[str]:
    """None when :func:`rescore_packed` can run ``decoder`` (fairseq's Transformer decoder, whose
    self-attention takes a per-sentence mask in its parallel pass), else why not."""
    try:
        from fairseq.models.transformer import TransformerDecoderBase as Base
    except ImportError:  # older fairseq
        from fairseq.models.transformer import TransformerDecoder as Base
    if not isinstance(decoder, Base):
        return f"{type(decoder).__name__} (not a fairseq Transformer decoder)"
    if getattr(decoder, "cross_self_attention", False):
        return "--cross-self-attention"
    for layer in decoder.layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None or getattr(attn, "use_xformers", False) or getattr(attn, "skip_embed_dim_check", False) \
                or getattr(attn, "onnx_trace", False):
            return "this self-attention (xformers, onnx tracing or pruned heads: not torch's attention)"
    return None


@contextmanager
def packed_decoder(decoder, positions: Optional[Tensor], mask: Tensor):
    """The Transformer decoder with its position embeddings and its self-attention mask replaced by
    ``positions`` and ``mask`` for one call of ``extract_features`` (both restored afterwards)."""
    embed = decoder.embed_positions
    if embed is not None:
        embed.forward = lambda *args, **kwargs: positions
    decoder.buffered_future_mask = lambda tensor: mask
    try:
        yield decoder
    finally:
        del decoder.buffered_future_mask  # the class's method again
        if embed is not None:
            del embed.forward


def packed_attention_mask(segment_start: Tensor, heads: int) -> Tensor:
    """(B·heads, 2T, 2T) bool, True where attention is *not* allowed, over a row that holds the
    gold's T positions then the violating path's T positions.  A gold position j attends to gold
    positions ≤ j (the usual causal mask).  A violating position j, in the segment that starts at
    s = ``segment_start[b, j]`` (the step after the last reset), attends to gold positions < s and
    to violating positions s..j: its prefix is the gold up to the reset, then the segment's own
    tokens, exactly the path the search scored.  (At j = s the two rows hold the same input and
    context, so the violating position s equals the gold's.)"""
    B, T = segment_start.shape
    steps = torch.arange(T, device=segment_start.device)
    s = segment_start.unsqueeze(2)  # (B, T, 1): the query's segment start
    keys = steps.view(1, 1, T)
    queries = steps.view(1, T, 1)
    gold_gold = (keys <= queries).expand(B, T, T)
    viol_gold = keys < s
    viol_viol = (keys >= s) & (keys <= queries)
    allowed = torch.cat([torch.cat([gold_gold, torch.zeros_like(gold_gold)], 2),
                         torch.cat([viol_gold, viol_viol], 2)], 1)
    return (~allowed).repeat_interleave(heads, 0)


def rescore_packed(model, encoder_out, target: Tensor, result: SearchResult, pad: int, eos: int, *,
                   nll: bool = False, dropout: Optional[SharedDropout] = None) -> Rescored:
    """The gold path and the violating path of every sentence, re-scored under autograd in one
    teacher-forced pass of a Transformer decoder over B rows of 2T positions.

    Each row holds the gold (positions 0..T-1) then the violating path (``violating_tokens``: the
    gold outside the violating segments, the rival's tokens inside), both at decoder positions
    0..T-1 (the gold's position embeddings, used twice), under :func:`packed_attention_mask`: each
    violating segment sees the gold prefix before its reset and its own tokens, so one row scores
    all the disjoint segments of a sentence at once.  Saved-for-backward memory is that of one
    teacher-forced pass over 2·B rows (plus self-attention weights over 2T keys instead of T), so
    it grows linearly in T (up to the attention's T² terms) however many violations a batch has,
    where :func:`rescore_parallel` needs one row per violation and the Transformer's
    :func:`rescore_incremental` saves its cached keys and values again at every step (T²).  The
    scores read are those of :func:`rescore_parallel`; gradients reach the gold prefix through the
    violating positions' attention to it (as through the search's reset).  No decoder dropout
    (``dropout`` must be None: :class:`SharedDropout` supports the LSTM only)."""
    if dropout is not None:
        raise ValueError("packed re-scoring runs the decoder without dropout (--bso-dropout off)")
    decoder = model.decoder
    B, T = target.shape
    heads = decoder.layers[0].self_attn.num_heads
    gold_in = torch.cat([target.new_full((B, 1), eos), target[:, :-1]], 1)
    prev_violating = torch.where(result.reset, target, result.violating_tokens)  # after a reset: the gold token
    violating_in = torch.cat([target.new_full((B, 1), eos), prev_violating[:, :-1]], 1)
    positions = None
    if decoder.embed_positions is not None:
        positions = decoder.embed_positions(gold_in)
        positions = torch.cat([positions, positions], 1)
    mask = packed_attention_mask(result.segment_start, heads)
    with packed_decoder(decoder, positions, mask):
        features = decoder.extract_features(torch.cat([gold_in, violating_in], 1), encoder_out=encoder_out)[0]
    return read_scores(decoder, target, result, features[:, :T], features[:, T:], result.violations()[:, 0], nll)


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
    step when the rival is a hypothesis that finished at t: the learning-to-stop step).  With
    ``log_softmax``, a finished rival is compared as fairseq's standard beam ranks finished
    hypotheses: both whole sums normalized by length^lenpen (the gold prefix no longer cancels).
    """
    if result.score == "log_softmax":
        gold_side = segment_sums(gold, result.segment_start, result.gold_step)
        violating_side = segment_sums(violating, result.segment_start)
        steps = torch.arange(gold.size(1), device=gold.device).unsqueeze(0)
        finished = result.gold_step > steps
        cum = gold.cumsum(1)
        prefix = torch.cat([cum.new_zeros(cum.size(0), 1), cum], 1).gather(1, result.segment_start)
        alpha = result.lenpen
        gold_whole = cum.gather(1, result.gold_step) / (result.gold_step + 1).to(cum.dtype).pow(alpha)
        violating_whole = (prefix + violating_side) / (steps + 1).to(cum.dtype).pow(alpha)
        gold = torch.where(finished, gold_whole, gold_side)
        violating = torch.where(finished, violating_whole, violating_side)
    else:  # a finished rival is compared with the gold's last step
        gold = gold.gather(1, result.gold_step)
    terms = result.delta * (margin - gold + violating)
    return torch.where(result.violation, terms, torch.zeros_like(terms)).sum()


def nll_loss(gold_lprobs: Tensor, target: Tensor, pad: int) -> Tensor:
    """The NLL term: −Σ log p(y_t | y_<t) over the gold tokens of the batch (the decoder
    without dropout, as in the re-scoring pass it comes from)."""
    return -gold_lprobs.masked_fill(target.eq(pad), 0.0).sum()
