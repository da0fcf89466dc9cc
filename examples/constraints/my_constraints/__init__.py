"""A user plugin with its own constraint, next to fairseq_bso."""

import torch

import fairseq_bso  # noqa: F401  (registers the plugin's task and criterion)
from fairseq_bso.constraints import NEG_INF, Constraint, register_constraint


@register_constraint("no_repeat")
class NoRepeatConstraint(Constraint):
    """Never emit the same token twice in a row. State: the last token of each row."""

    def initial_state(self, src_tokens, beam):
        return torch.full((src_tokens.size(0) * beam,), -1, dtype=torch.long, device=src_tokens.device)

    def mask(self, last):
        mask = torch.zeros(last.size(0), len(self.tgt_dict), device=last.device)
        rows = (last >= 0).nonzero().view(-1)
        mask[rows, last[rows]] = NEG_INF
        return mask

    def step(self, last, tokens):
        return tokens.clone()
