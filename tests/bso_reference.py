"""Algorithm 1 written literally: one sentence at a time, Python lists, no incremental state.

Every score is computed by running the decoder on the whole prefix with teacher
forcing, so nothing here shares code or tricks with ``fairseq_bso.bso.search``.

Levers, as ``fairseq_bso.bso.search`` documents them:

* ``score="logit"`` (the paper): a prefix scores the raw logit of its last token;
  ``score="log_softmax"``: a prefix scores Σ_j log softmax(f(· | prefix_<j))[prefix_j],
  and the beam keeps each prefix's score (computed here from scratch for every prefix);
* ``gold_kth="self"``: the K-th item is the rival even when it is the gold;
  ``"previous"``: then the (K−1)-th item is;
* :func:`reference_nll`: −Σ_t log p(y_t | y_<t) over the whole gold;
* ``stop=True`` (learning to stop): at step 0 (unless the gold is the one-token </s>) </s> is
  no candidate at all (fairseq's generator never finishes the empty hypothesis); at a later
  step before the gold's last, a candidate ending in </s> that ranks in the top K finishes
  (the next beam is the top K of the others; the K-th item of the margin check is still taken
  among all candidates); the best one finishing at t is a violation when its ranking score +
  margin exceeds the whole gold's ranking score (and the step's ordinary violation, if any,
  has a smaller rival-minus-gold gap); its loss term compares the two ranking scores, its Δ the
  hypothesis with the whole gold from the segment's start.  The ranking score of a finished
  hypothesis is fairseq's: its score with ``logit``; with ``log_softmax`` its whole summed
  log-probability divided by its length (</s> included) to the power ``lenpen``;
* :func:`reference_dropout`: shared dropout masks (``--bso-dropout shared``) applied to the
  full-prefix passes, read from the vectorized run's mask bank by (step, call) position.
"""

from contextlib import contextmanager

import torch


def prefix_logits(model, src_tokens, src_lengths, prefix, eos):
    """f(· | prefix): raw logits after feeding </s> + prefix (teacher forcing, full recompute)."""
    prev = torch.tensor([[eos] + list(prefix)])
    enc = model.encoder(src_tokens, src_lengths=src_lengths)
    logits = model.decoder(prev, encoder_out=enc)[0]
    return logits[0, -1]


def prefix_score(model, src_tokens, src_lengths, prefix, eos, score):
    """The score of a whole prefix (with autograd)."""
    if score == "logit":
        return prefix_logits(model, src_tokens, src_lengths, prefix[:-1], eos)[prefix[-1]]
    return sum(torch.log_softmax(prefix_logits(model, src_tokens, src_lengths, prefix[:j], eos), -1)[prefix[j]]
               for j in range(len(prefix)))


def reference_nll(model, src_tokens, src_lengths, gold, eos):
    return -prefix_score(model, src_tokens, src_lengths, gold, eos, "log_softmax")


def reference_bso(model, src_tokens, src_lengths, gold, beam_size, invalid, cost, eos, margin=1.0,
                  allowed=None, score="logit", gold_kth="self", stop=False, lenpen=1.0):
    """Returns (violation steps, reset steps, loss tensor with graph, deltas by step).

    ``gold``: target token list ending in </s>.  ``invalid``: token ids never
    proposed.  ``cost(violating_segment, gold_segment) -> Δ``.  ``allowed(prefix)``
    (optional): the set of tokens a constraint allows after ``prefix``.
    """
    T = len(gold)
    beam = [[]]  # prefixes
    segment_start = 0
    violations, resets, deltas, loss_terms = [], [], {}, []
    def finished_score(prefix, value):  # how fairseq's decoders rank a finished hypothesis
        return value / len(prefix) ** lenpen if score == "log_softmax" else value

    if stop:
        with torch.no_grad():
            gold_final = finished_score(gold, prefix_score(model, src_tokens, src_lengths, gold, eos, score).item())
    for t in range(T):
        candidates = []
        with torch.no_grad():
            for prefix in beam:
                step = prefix_logits(model, src_tokens, src_lengths, prefix, eos)
                base = 0.0
                if score == "log_softmax":
                    step = torch.log_softmax(step, -1)
                    base = prefix_score(model, src_tokens, src_lengths, prefix, eos, score).item() if prefix else 0.0
                ok = allowed(prefix) if allowed is not None else None
                for w in range(step.numel()):
                    if w in invalid or (ok is not None and w not in ok):
                        continue
                    candidates.append((base + step[w].item(), prefix + [w]))
        candidates.sort(key=lambda c: -c[0])
        finished, unfinished = [], candidates
        if stop and t < T - 1:
            if t == 0:  # the empty hypothesis </s> never finishes, nor stays on the beam
                candidates = [c for c in candidates if c[1][-1] != eos]
            finished = [(finished_score(p, s), p) for s, p in candidates[:beam_size] if p[-1] == eos]
            unfinished = [c for c in candidates if c[1][-1] != eos]
        gold_prefix = gold[: t + 1]
        gold_score = next(s for s, p in candidates if p == gold_prefix)
        if t == T - 1:
            incorrect = [c for c in candidates if c[1] != gold_prefix]
            rival = incorrect[0] if incorrect else None
        else:
            rival = candidates[beam_size - 1] if len(candidates) >= beam_size else None
            if rival is not None and rival[1] == gold_prefix and gold_kth == "previous":
                rival = candidates[beam_size - 2]
        compared = gold_prefix  # the gold the rival is compared with
        ordinary = rival is not None and gold_score < rival[0] + margin
        rival_finished = False
        if finished:
            best = max(finished, key=lambda c: c[0])
            if best[0] + margin > gold_final and (not ordinary or best[0] - gold_final > rival[0] - gold_score):
                rival, compared, ordinary, rival_finished = best, gold, True, True
        if ordinary:
            violations.append(t)
            violating = rival[1]
            delta = cost(violating[segment_start:], compared[segment_start:])
            deltas[t] = delta
            # the terms with autograd: gold and violating prefixes scored from scratch
            f_gold = prefix_score(model, src_tokens, src_lengths, compared, eos, score)
            f_viol = prefix_score(model, src_tokens, src_lengths, violating, eos, score)
            if rival_finished:
                f_gold, f_viol = finished_score(compared, f_gold), finished_score(violating, f_viol)
            loss_terms.append(delta * (margin - f_gold + f_viol))
            if t < T - 1:
                resets.append(t)
                beam = [gold_prefix]
                segment_start = t + 1
        else:
            beam = [p for _, p in unfinished[:beam_size]]
    loss = sum(loss_terms) if loss_terms else torch.zeros(())
    return violations, resets, loss, deltas


@contextmanager
def reference_dropout(decoder, masks, sentence):
    """Full-prefix passes of fairseq's ``LSTMDecoder`` with the dropout masks of sentence
    ``sentence`` from a ``SharedDropout`` bank (``masks[(step, call)]``, one row per sentence).

    A pass over L positions calls dropout in the LSTMDecoder's order: the input embeddings of all
    L positions at once, then for every position each layer's output and the attention output,
    then (when the decoder has ``additional_fc``) the final features of all L positions.  An
    incremental step t makes the same calls for position t alone, numbered 0 (input), 1..n
    (layers), n + 1 (attention output), n + 2 (``additional_fc``): this maps each call of the
    full pass to the (t, call) mask the vectorized run drew.
    """
    from fairseq.modules import FairseqDropout

    n = len(decoder.layers)
    has_fc = hasattr(decoder, "additional_fc") and decoder.adaptive_softmax is None
    state = {"k": 0, "L": None}

    def row(step, call):
        return masks[(step, call)][sentence : sentence + 1]

    def apply(x, inplace=False):
        k = state["k"]
        if k == 0:  # input embeddings (1, L, E)
            state["L"] = x.size(1)
            mask = torch.cat([row(j, 0) for j in range(state["L"])], 1)
        elif k <= state["L"] * (n + 1):  # position j's layer outputs and attention output (1, H)
            j, c = divmod(k - 1, n + 1)
            mask = row(j, 1 + c)
        else:  # additional_fc's output (1, L, D)
            mask = torch.cat([row(j, n + 2) for j in range(state["L"])], 1)
        state["k"] = k + 1
        if state["k"] == 1 + state["L"] * (n + 1) + int(has_fc):  # the pass is over
            state["k"] = 0
        return x * mask

    modules = [m for m in decoder.modules() if isinstance(m, FairseqDropout) and m.p > 0]
    for m in modules:
        m.forward = apply
    try:
        yield
    finally:
        for m in modules:
            del m.forward
