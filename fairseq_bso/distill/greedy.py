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

For fairseq's LSTM models (``--arch lstm*``: ``LSTMModel`` with fairseq's own ``LSTMDecoder``, no adaptive softmax,
one model) the decoder step runs through ``LSTMStep`` instead of fairseq's ``forward_decoder``: the same tensor
operations on tensors of the same shapes and strides, in the same order (so the same numbers), without fairseq's
per-step Python work (the incremental-state dictionaries, the decoder's re-stacking of its states, module-call
hooks, the ensemble wrapper); at batch size 1 that Python work costs more than a small student's arithmetic.
Any other model decodes through ``forward_decoder``, with an info line saying so.

What it leaves out: beam > 1, sampling, prefix tokens, lexical constraints, ``--no-repeat-ngram-size``,
``--match-source-len``, a language-model fusion and diverse search.  ``build`` refuses them with an error
naming the option (it never falls back silently).  Selected in ``fairseq-generate`` with ``--lean-greedy --beam 1``
and any plugin translation task (``--task translation_pruned``, ``constrained_beam_training`` or ``seq_kd``;
``fairseq_bso.distill.lean_greedy_task``).
"""

import logging
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.sequence_generator import SequenceGenerator

logger = logging.getLogger(__name__)

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


class LSTMStep:
    """One step of fairseq's ``LSTMDecoder`` (``fairseq/models/lstm.py``) in inference, for a greedy search.

    ``LSTMDecoder.extract_features`` and ``output_layer`` followed by ``EnsembleModel.forward_decoder``'s
    temperature and log-softmax, written out: embedding of the previous token, input feeding (the previous
    attentional output concatenated to it), the LSTM cells (residual connections if the model has them), the
    attention layer (``AttentionLayer.forward``: scores ``sum(source_hids * input_proj(h))``, padding masked,
    softmax over the source, context, ``tanh(output_proj([context; h]))``), ``additional_fc``, the output
    projection (shared embedding or ``fc_out``), then ``log_softmax`` to float32 (``fairseq.utils.log_softmax``).  Each operation is fairseq's,
    on a tensor of the same shape and strides, so the log-probabilities and attention are the generator's.
    What it skips is work whose result is the identity in inference: dropout modules (refused if dropout
    applies during inference), masking with an all-false padding mask (the float32 round trip around it is
    kept for other dtypes), division by a temperature of 1, and the copies into and out of the
    incremental-state dictionary.  It reads the weights when it is built, once per ``generate`` call.  Its state is a tuple of tensors reordered with
    ``index_select``, as ``LSTMDecoder.reorder_incremental_state`` does.
    """

    def __init__(self, decoder):
        self.decoder = decoder
        self.cells = [(c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh) for c in decoder.layers]
        att = decoder.attention
        self.att = None if att is None else (att.input_proj.weight, att.input_proj.bias, att.output_proj.weight,
                                            att.output_proj.bias)
        fc = getattr(decoder, "additional_fc", None)
        self.fc = None if fc is None else (fc.weight, fc.bias)
        self.out = ((decoder.embed_tokens.weight, None) if decoder.share_input_output_embed
                    else (decoder.fc_out.weight, decoder.fc_out.bias))

    @staticmethod
    def unsupported(models) -> Optional[str]:
        """Why ``LSTMStep`` cannot replace ``forward_decoder`` for these models (``None``: it can)."""
        from fairseq.models.lstm import LSTMDecoder, LSTMEncoder, LSTMModel

        if len(models) != 1:
            return f"an ensemble of {len(models)} models"
        model = models[0]
        parts = (type(model), type(getattr(model, "encoder", None)), type(getattr(model, "decoder", None)))
        if parts != (LSTMModel, LSTMEncoder, LSTMDecoder):  # a subclass may override what LSTMStep writes out
            return f"{'/'.join(t.__name__ for t in parts)} is not fairseq's LSTMModel/LSTMEncoder/LSTMDecoder"
        decoder = model.decoder
        if any(m._forward_hooks or m._forward_pre_hooks for m in decoder.modules()):
            return "forward hooks on the decoder"
        if decoder.adaptive_softmax is not None:
            return "adaptive softmax"
        if decoder.onnx_trace:
            return "ONNX tracing"
        if decoder.encoder_output_units == 0:
            return "no encoder (no input feeding)"
        if decoder.training or any(d.p > 0 and (d.training or d.apply_during_inference)
                                   for d in (decoder.dropout_in_module, decoder.dropout_out_module)):
            return "dropout applies (training mode or --retain-dropout)"
        return None

    def start(self, encoder_out):
        """The decoder's state before the first step, from ``LSTMEncoder``'s output tuple."""
        source_hids, hiddens, cells, mask = encoder_out
        d = self.decoder
        hiddens = [hiddens[i] for i in range(d.num_layers)]
        cells = [cells[i] for i in range(d.num_layers)]
        if d.encoder_hidden_proj is not None:
            hiddens = [d.encoder_hidden_proj(h) for h in hiddens]
            cells = [d.encoder_cell_proj(c) for c in cells]
        feed = source_hids.new_zeros(source_hids.size(1), d.hidden_size)
        return self._state(source_hids, mask, hiddens, cells, feed)

    @staticmethod
    def _state(source_hids, mask, hiddens, cells, feed):
        if mask is not None and not bool(mask.any()):
            mask = None  # masked_fill_ with an all-false mask is the identity
        return source_hids, mask, hiddens, cells, feed

    def reorder(self, state, order):
        source_hids, mask, hiddens, cells, feed = state
        return self._state(source_hids.index_select(1, order), None if mask is None else mask.index_select(1, order),
                           [h.index_select(0, order) for h in hiddens], [c.index_select(0, order) for c in cells],
                           feed.index_select(0, order))

    def __call__(self, prev_tokens, state, temperature: float = 1.0):
        """Log-probabilities (bsz x V, float32), attention (bsz x srclen; ``None`` without an attention layer or
        when the decoder's ``need_attn`` is off, as in ``LSTMDecoder``) and the next state."""
        d = self.decoder
        source_hids, mask, hiddens, cells, feed = state
        x = d.embed_tokens(prev_tokens.view(-1, 1)).transpose(0, 1)[0]
        inp = torch.cat((x, feed), dim=1)
        hiddens, cells = list(hiddens), list(cells)
        for i, weights in enumerate(self.cells):
            hidden, cell = torch.lstm_cell(inp, (hiddens[i], cells[i]), *weights)
            inp = hidden + hiddens[i] if d.residuals else hidden
            hiddens[i], cells[i] = hidden, cell
        attn = None
        if self.att is not None:
            w_in, b_in, w_out, b_out = self.att
            scores = (source_hids * F.linear(hidden, w_in, b_in).unsqueeze(0)).sum(dim=2)
            if mask is not None:
                scores = scores.float().masked_fill_(mask, float("-inf")).type_as(scores)
            elif scores.dtype != torch.float32:  # fairseq's mask is always a tensor: keep its round trip
                scores = scores.float().type_as(scores)  # through float32 (not the identity for float64)
            scores = F.softmax(scores, dim=0)
            context = (scores.unsqueeze(2) * source_hids).sum(dim=0)
            out = torch.tanh(F.linear(torch.cat((context, hidden), dim=1), w_out, b_out))
            if d.need_attn:  # LSTMDecoder returns attention only then (fairseq-generate: --print-alignment)
                attn = scores.t()
        else:
            out = hidden
        y = out.view(1, out.size(0), out.size(1)).transpose(1, 0)  # LSTMDecoder's B x T x C view
        if self.fc is not None:
            y = F.linear(y, *self.fc)
        y = F.linear(y, *self.out)
        if temperature != 1.0:
            y = y.div_(temperature)
        lprobs = F.log_softmax(y, dim=-1, dtype=torch.float32)[:, -1, :]  # fairseq.utils.log_softmax
        return lprobs, attn, (source_hids, mask, hiddens, cells, out)


class GreedyGenerator(SequenceGenerator):
    """``SequenceGenerator`` at beam 1 with the beam bookkeeping removed (same hypotheses)."""

    def __init__(self, models, tgt_dict, beam_size=1, **kwargs):
        if beam_size != 1:
            raise ValueError(f"GreedyGenerator decodes greedily: beam_size must be 1, got {beam_size}")
        super().__init__(models, tgt_dict, beam_size=1, **kwargs)
        if self.repeat_ngram_blocker is not None or self.match_source_len or self.lm_model is not None:
            raise ValueError("GreedyGenerator does not implement --no-repeat-ngram-size, --match-source-len or "
                             "language-model fusion")
        self._logged: Optional[str] = None

    def _decoder_step(self):
        """``LSTMStep`` for fairseq's LSTM models in inference, else ``None`` (fairseq's ``forward_decoder``);
        decided and built per ``generate`` call, since the model can change after the generator is built."""
        why = LSTMStep.unsupported(list(self.model.models))
        message = ("--lean-greedy: the decoder step is LSTMStep (fairseq's LSTM decoder written out)" if why is None
                   else f"--lean-greedy: the decoder step runs through fairseq's forward_decoder ({why})")
        if message != self._logged:
            logger.info(message)
            self._logged = message
        return None if why is not None else LSTMStep(self.model.models[0].decoder)

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
        step_fn = self._decoder_step()
        state = step_fn.start(encoder_outs[0]) if step_fn is not None else None

        scores = torch.zeros(bsz, max_len + 1, device=src_tokens.device)  # cumulative, per step
        tokens = torch.full((bsz, max_len + 2), self.pad, dtype=torch.long, device=src_tokens.device)
        tokens[:, 0] = self.eos if bos_token is None else bos_token
        attn = None
        sentence = list(range(bsz))  # original position of each remaining row
        finalized: List[List[Dict[str, torch.Tensor]]] = [[] for _ in range(bsz)]
        suppress = getattr(self, "token_indices_to_suppress", None)

        for step in range(max_len + 1):  # one extra step for </s>
            if step_fn is not None:
                lprobs, avg_attn, state = step_fn(tokens[:, step], state, self.temperature)
            else:
                lprobs, avg_attn = self.model.forward_decoder(tokens[:, : step + 1], encoder_outs,
                                                              incremental_states, self.temperature)
            lprobs = torch.nan_to_num(lprobs, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
            lprobs[:, self.pad] = -math.inf
            if self.unk_penalty:
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
                if step_fn is not None:
                    state = step_fn.reorder(state, keep)
                else:
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
