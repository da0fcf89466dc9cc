"""Algorithm 1 written literally: one sentence at a time, Python lists, no incremental state.

Every score is computed by running the decoder on the whole prefix with teacher
forcing, so nothing here shares code or tricks with ``fairseq_bso.training_search``.
"""

import torch


def prefix_logits(model, src_tokens, src_lengths, prefix, eos):
    """f(· | prefix): raw logits after feeding </s> + prefix (teacher forcing, full recompute)."""
    prev = torch.tensor([[eos] + list(prefix)])
    enc = model.encoder(src_tokens, src_lengths=src_lengths)
    logits = model.decoder(prev, encoder_out=enc)[0]
    return logits[0, -1]


def reference_bso(model, src_tokens, src_lengths, gold, beam_size, invalid, cost, eos, margin=1.0,
                  allowed=None):
    """Returns (violation steps, reset steps, loss tensor with graph, deltas by step).

    ``gold``: target token list ending in </s>.  ``invalid``: token ids never
    proposed.  ``cost(violating_segment, gold_segment) -> Δ``.  ``allowed(prefix)``
    (optional): the set of tokens a constraint allows after ``prefix``.
    """
    T = len(gold)
    beam = [[]]  # prefixes
    segment_start = 0
    violations, resets, deltas, loss_terms = [], [], {}, []
    for t in range(T):
        candidates = []
        with torch.no_grad():
            for prefix in beam:
                logits = prefix_logits(model, src_tokens, src_lengths, prefix, eos)
                ok = allowed(prefix) if allowed is not None else None
                for w in range(logits.numel()):
                    if w in invalid or (ok is not None and w not in ok):
                        continue
                    candidates.append((logits[w].item(), prefix + [w]))
        candidates.sort(key=lambda c: -c[0])
        gold_prefix = gold[: t + 1]
        gold_score = next(score for score, p in candidates if p == gold_prefix)
        if t == T - 1:
            incorrect = [c for c in candidates if c[1] != gold_prefix]
            rival = incorrect[0] if incorrect else None
        else:
            rival = candidates[beam_size - 1] if len(candidates) >= beam_size else None
        if rival is not None and gold_score < rival[0] + margin:
            violations.append(t)
            violating = rival[1]
            delta = cost(violating[segment_start:], gold_prefix[segment_start:])
            deltas[t] = delta
            # the terms with autograd: gold and violating logits on their own prefixes
            f_gold = prefix_logits(model, src_tokens, src_lengths, gold[:t], eos)[gold[t]]
            f_viol = prefix_logits(model, src_tokens, src_lengths, violating[:t], eos)[violating[t]]
            loss_terms.append(delta * (margin - f_gold + f_viol))
            if t < T - 1:
                resets.append(t)
                beam = [gold_prefix]
                segment_start = t + 1
        else:
            beam = [p for _, p in candidates[:beam_size]]
    loss = sum(loss_terms) if loss_terms else torch.zeros(())
    return violations, resets, loss, deltas
