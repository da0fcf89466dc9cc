"""Generation with fairseq's ``SequenceGenerator``: BSO-consistent scores and constraints.

* **BSO decoding** (``--bso-decoding``): beam search on the decoder's raw
  scores, as the model was trained: candidates are ranked by the step's logits
  alone (not summed over time, no log-softmax), and a finished hypothesis scores
  ``f(</s>)``, without length normalization.
* **Constraints** (``--constraint``): the constraint's 0/−inf mask is added to
  every row's scores before the top-k, vectorized over batch × beam; the state
  follows the generator's beam reorders through the ``Search`` hooks
  (``update_constraints``, ``prune_sentences``), as fairseq's lexically
  constrained search does.

Everything else (finalization, early stop, batching, output) is fairseq's own
generator, so ``fairseq-generate`` prints the usual ``H-``/``D-`` lines.
"""

from typing import Optional

import torch
from fairseq.search import BeamSearch
from fairseq.sequence_generator import EnsembleModel, SequenceGenerator


class RawScoreModel(EnsembleModel):
    """A single model whose ``forward_decoder`` returns raw logits instead of log-probs."""

    def __init__(self, models):
        if len(models) != 1:
            raise ValueError("--bso-decoding scores with one model's raw logits; ensembles are not supported")
        super().__init__(models)

    @torch.jit.unused
    def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature: float = 1.0):
        model = self.models[0]
        encoder_out = encoder_outs[0] if self.has_encoder() else None
        if self.has_incremental_states():
            decoder_out = model.decoder.forward(tokens, encoder_out=encoder_out,
                                                incremental_state=incremental_states[0])
        else:
            decoder_out = model.decoder.forward(tokens, encoder_out=encoder_out)
        attn = None
        if len(decoder_out) > 1 and decoder_out[1] is not None:
            attn = decoder_out[1]
            if isinstance(attn, dict):
                attn = attn.get("attn", [None])[0]
            if attn is not None:
                attn = attn[:, -1, :]
        logits = decoder_out[0][:, -1, :].float()
        if temperature != 1.0:
            logits = logits / temperature
        return logits, attn


class ConstrainedBeamSearch(BeamSearch):
    """Beam search with an optional constraint mask and optional raw-score ranking."""

    def __init__(self, tgt_dict, constraint=None, raw_scores: bool = False):
        super().__init__(tgt_dict)
        self.constraint = constraint
        self.raw_scores = raw_scores
        # A constrained sentence may have fewer valid outputs than the beam (a 2-word
        # source has 2 orders): it ends at max_len with what it found, not with an assert.
        self.stop_on_max_len = constraint is not None
        self.state = None
        self.beam_size = None
        self.cand_beams = None
        self.cand_tokens = None
        self.cand_scores = None
        self.dead = None

    def begin(self, src_tokens, beam_size: int) -> None:
        self.beam_size = beam_size
        self.dead = None
        if self.constraint is not None:
            self.state = self.constraint.initial_state(src_tokens, beam_size)

    @torch.jit.export
    def step(self, step: int, lprobs, scores: Optional[torch.Tensor], prev_output_tokens=None,
             original_batch_idxs=None):
        bsz, beam_size, vocab_size = lprobs.size()
        if self.constraint is not None:
            # in place: the generator does not read lprobs after the search step
            self.constraint.apply_(lprobs.view(bsz * beam_size, vocab_size), self.state)
            if self.dead is not None:  # rows filled with −inf candidates stay dead (raw scores do not accumulate)
                lprobs.masked_fill_(self.dead.view(bsz, beam_size, 1), float("-inf"))
        if step == 0:
            # at the start all hypotheses are equal: use only the first beam
            lprobs = lprobs[:, ::beam_size, :].contiguous()
        elif not self.raw_scores:
            assert scores is not None
            lprobs = lprobs + scores[:, :, step - 1].unsqueeze(-1)
        top_prediction = torch.topk(lprobs.view(bsz, -1), k=min(beam_size * 2, lprobs.view(bsz, -1).size(1) - 1))
        scores_buf = top_prediction[0]
        indices_buf = top_prediction[1]
        beams_buf = torch.div(indices_buf, vocab_size, rounding_mode="trunc")
        indices_buf = indices_buf.fmod(vocab_size)
        self.cand_beams, self.cand_tokens, self.cand_scores = beams_buf, indices_buf, scores_buf
        return scores_buf, indices_buf, beams_buf

    @torch.jit.export
    def prune_sentences(self, batch_idxs):
        if self.constraint is None:
            return
        rows = (batch_idxs.unsqueeze(1) * self.beam_size + torch.arange(self.beam_size, device=batch_idxs.device)).view(-1)
        self.state = self.constraint.reorder(self.state, rows)
        self.cand_beams = self.cand_beams[batch_idxs]
        self.cand_tokens = self.cand_tokens[batch_idxs]
        self.cand_scores = self.cand_scores[batch_idxs]

    @torch.jit.export
    def update_constraints(self, active_hypos):
        if self.constraint is None:
            return
        bsz = active_hypos.size(0)
        src_beam = self.cand_beams.gather(1, active_hypos)
        tokens = self.cand_tokens.gather(1, active_hypos).view(-1)
        order = (torch.arange(bsz, device=active_hypos.device).unsqueeze(1) * self.beam_size + src_beam).view(-1)
        self.state = self.constraint.step(self.constraint.reorder(self.state, order), tokens)
        self.dead = self.cand_scores.gather(1, active_hypos).view(-1) == float("-inf")


class ConstrainedSequenceGenerator(SequenceGenerator):
    """fairseq's generator with :class:`ConstrainedBeamSearch` (and raw scores for BSO)."""

    def __init__(self, models, tgt_dict, constraint=None, raw_scores=False, search_strategy=None, **kwargs):
        if search_strategy is not None and type(search_strategy) is not BeamSearch:
            raise ValueError(f"{type(search_strategy).__name__} cannot be combined with --constraint or "
                             "--bso-decoding (plain beam search only)")
        if raw_scores:
            models = RawScoreModel(models)
            kwargs["normalize_scores"] = False  # a finished hypothesis scores f(</s>)
        super().__init__(models, tgt_dict,
                         search_strategy=ConstrainedBeamSearch(tgt_dict, constraint, raw_scores), **kwargs)
        if constraint is not None and getattr(constraint, "max_len_a_b", None) is not None:
            # the constraint knows the output length: no search past it
            self.max_len_a, self.max_len_b = constraint.max_len_a_b

    def _generate(self, sample, prefix_tokens=None, constraints=None, bos_token=None):
        self.search.begin(sample["net_input"]["src_tokens"], self.beam_size)
        return super()._generate(sample, prefix_tokens=prefix_tokens, constraints=constraints, bos_token=bos_token)
