"""A lean greedy decoder: fairseq's ``SequenceGenerator`` at ``--beam 1``, without its beam bookkeeping.

Sequence-level knowledge distillation exists so that a small student can be decoded greedily (Kim & Rush
2016).  At batch size 1 on a CPU, fairseq's generator spends more time on its per-step beam bookkeeping
(candidate buffers, ``topk`` over ``2 * beam`` candidates, active-hypothesis masks, re-indexing of the
decoder and encoder states at every step) than a small LSTM student spends on its forward step, so the
student's speed-up over the teacher's beam is mostly lost to the generator (``benchmarks/decode_speed.py``).

``GreedyGenerator`` runs the same model calls as ``SequenceGenerator`` (``EnsembleModel.forward_encoder`` and
``forward_decoder`` with the incremental state) and applies the same rules to the log-probabilities, in the
same order: NaN → −inf, ``pad`` never chosen, ``--unkpen``, ``</s>`` forced at the maximum length
(``--max-len-a``/``--max-len-b``, capped by the model's positions), ``</s>`` blocked before ``--min-len``,
fairseq-fixed's suppressed tokens.  The next token is the first of the top two of (cumulative score +
log-probability), as ``BeamSearch.step`` ranks them at beam 1; a sentence whose best candidate is a finite
``</s>`` is finished and leaves the batch (its rows are dropped from the states, as the generator drops
them).  Its hypotheses (tokens, score normalized by ``(length) ** --lenpen`` unless ``--unnormalized``,
positional scores as differences of the cumulative scores, attention) are the generator's at beam 1; the
tests check token-for-token and score-for-score equality against ``SequenceGenerator`` through
``fairseq-generate``.

What it leaves out: beam > 1, sampling, prefix tokens, lexical constraints, ``--no-repeat-ngram-size``,
``--match-source-len``, a language-model fusion and diverse search.  ``build`` refuses them with an error
naming the option (it never falls back silently).  Selected in ``fairseq-generate`` with
``--task constrained_beam_training --lean-greedy --beam 1``.
"""

import math
from typing import Dict, List

import torch
from fairseq.sequence_generator import SequenceGenerator

UNSUPPORTED = (  # generation option (fairseq's GenerationConfig): the value it must keep for the lean decoder
    ("sampling", False), ("prefix_size", 0), ("constraints", None), ("no_repeat_ngram_size", 0),
    ("match_source_len", False), ("diverse_beam_groups", -1), ("diversity_rate", -1.0), ("lm_path", None),
    ("score_reference", False), ("print_alignment", None),
)


def check_generation_options(args) -> None:
    """Refuse, naming the option, what the lean greedy decoder does not implement."""
    beam = getattr(args, "beam", 5)  # fairseq's build_generator default
    if beam != 1:
        raise ValueError(f"--lean-greedy decodes greedily: it needs --beam 1, got --beam {beam}")
    nbest = getattr(args, "nbest", 1)
    if nbest != 1:
        raise ValueError(f"--lean-greedy returns one hypothesis per sentence: it needs --nbest 1, got {nbest}")
    for name, default in UNSUPPORTED:
        value = getattr(args, name, default)
        if value not in (default, None):
            raise ValueError(f"--lean-greedy does not implement --{name.replace('_', '-')} (got {value!r}); "
                             "drop it or decode without --lean-greedy")


class GreedyGenerator(SequenceGenerator):
    """``SequenceGenerator`` at beam 1 with the beam bookkeeping removed (same hypotheses)."""

    def __init__(self, models, tgt_dict, beam_size=1, **kwargs):
        if beam_size != 1:
            raise ValueError(f"GreedyGenerator decodes greedily: beam_size must be 1, got {beam_size}")
        super().__init__(models, tgt_dict, beam_size=1, **kwargs)
        if self.repeat_ngram_blocker is not None or self.match_source_len or self.lm_model is not None:
            raise ValueError("GreedyGenerator does not implement --no-repeat-ngram-size, --match-source-len or "
                             "language-model fusion")

    @torch.no_grad()
    def _generate(self, sample: Dict[str, Dict[str, torch.Tensor]], prefix_tokens=None, constraints=None,
                  bos_token=None):
        if prefix_tokens is not None or constraints is not None:
            raise ValueError("GreedyGenerator does not implement prefix tokens or constraints")
        net_input = sample["net_input"]
        src_tokens = net_input["src_tokens"] if "src_tokens" in net_input else net_input["source"]
        bsz, src_len = src_tokens.size()[:2]
        max_len = min(int(self.max_len_a * src_len + self.max_len_b), self.max_len - 1)
        assert self.min_len <= max_len, "min_len cannot be larger than max_len, please adjust these!"
        incremental_states = [{} for _ in range(self.model.models_size)]
        encoder_outs = self.model.forward_encoder(net_input)
        rows = torch.arange(bsz, device=src_tokens.device)
        encoder_outs = self.model.reorder_encoder_out(encoder_outs, rows)  # as the generator does (identity)

        scores = torch.zeros(bsz, max_len + 1, device=src_tokens.device)  # cumulative, per step
        tokens = torch.full((bsz, max_len + 2), self.pad, dtype=torch.long, device=src_tokens.device)
        tokens[:, 0] = self.eos if bos_token is None else bos_token
        attn = None
        sentence = list(range(bsz))  # original position of each remaining row
        finalized: List[List[Dict[str, torch.Tensor]]] = [[] for _ in range(bsz)]
        suppress = getattr(self, "token_indices_to_suppress", None)

        for step in range(max_len + 1):  # one extra step for </s>
            lprobs, avg_attn = self.model.forward_decoder(tokens[:, : step + 1], encoder_outs, incremental_states,
                                                          self.temperature)
            lprobs[lprobs != lprobs] = -math.inf
            lprobs[:, self.pad] = -math.inf
            lprobs[:, self.unk] -= self.unk_penalty
            if step >= max_len:
                lprobs[:, : self.eos] = -math.inf
                lprobs[:, self.eos + 1:] = -math.inf
            if step < self.min_len:
                lprobs[:, self.eos] = -math.inf
            if suppress is not None:
                lprobs[:, suppress] = -math.inf
            if avg_attn is not None:
                if attn is None:
                    attn = torch.empty(bsz, avg_attn.size(1), max_len + 2).to(scores)
                attn[:, :, step + 1].copy_(avg_attn)
            scores = scores.type_as(lprobs)
            cumulative = lprobs if step == 0 else lprobs + scores[:, step - 1: step]
            # BeamSearch.step at beam 1: the top 2 of the cumulative scores; the first wins
            top_scores, top_tokens = torch.topk(cumulative, k=min(2, cumulative.size(1) - 1), dim=1)
            best_score, best_token = top_scores[:, 0], top_tokens[:, 0]
            ended = best_token.eq(self.eos) & best_score.ne(-math.inf)
            if bool(ended.any()):
                for row in ended.nonzero(as_tuple=False).view(-1).tolist():
                    finalized[sentence[row]].append(self._hypothesis(row, step, tokens, scores, best_score, attn))
                keep = (~ended).nonzero(as_tuple=False).view(-1)
                if keep.numel() == 0:
                    break
                sentence = [sentence[i] for i in keep.tolist()]
                tokens, scores, best_score, best_token = tokens[keep], scores[keep], best_score[keep], best_token[keep]
                if attn is not None:
                    attn = attn[keep]
                self.model.reorder_incremental_state(incremental_states, keep)
                encoder_outs = self.model.reorder_encoder_out(encoder_outs, keep)
            assert step < max_len, f"{step} < {max_len}"
            tokens[:, step + 1] = best_token
            scores[:, step] = best_score
        return finalized

    def _hypothesis(self, row: int, step: int, tokens, scores, eos_score, attn) -> Dict[str, torch.Tensor]:
        """The generator's ``finalize_hypos`` for one row ending with </s> at ``step``."""
        hyp_tokens = tokens[row, 1: step + 2].clone()
        hyp_tokens[step] = self.eos
        positional = scores[row, : step + 1].clone()
        positional[step] = eos_score[row]
        positional[1:] = positional[1:] - positional[:-1]
        score = eos_score[row].clone()
        if self.normalize_scores:
            score /= (step + 1) ** self.len_penalty
        return {"tokens": hyp_tokens, "score": score,
                "attention": attn[row, :, 1: step + 2].clone() if attn is not None else torch.empty(0),
                "alignment": torch.empty(0), "positional_scores": positional}
