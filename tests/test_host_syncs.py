"""Host-device synchronizations of one BSO training forward (issue 26 item 2).

Counted by ``benchmarks.gpu_readiness.SyncCounter``, a ``TorchFunctionMode`` over every torch call
that reads a tensor back to the host (``.item()``, ``.tolist()``, ``nonzero``, ``bool()``/``int()``/
``float()`` of a tensor, boolean-mask indexing, ``.cpu()``, ...), around the criterion's call on a
random LSTM (8 sentences, K = 4), on the search's accelerator route (all B·K slots every step; a
CPU runs its live slots only, reading them from host memory once per step).  The count must not grow
with the target length T (before: 41 / 71 / 131 at T = 10 / 20 / 40)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gpu_readiness import SyncCounter, host_syncs  # noqa: E402


@pytest.mark.parametrize("options", [{}, {"bso_score": "logit", "bso_nll_weight": 0.5},
                                     {"bso_learn_to_stop": True, "bso_cost": "sentence_bleu"}])
def test_host_syncs_do_not_grow_with_target_length(options):
    counts = {T: host_syncs(T, **options) for T in (10, 20, 40)}
    names = {T: c.names for T, c in counts.items()}
    assert len({c.count for c in counts.values()}) == 1, f"host reads by T: {names}"
    assert counts[40].count <= 12, f"host reads at T=40: {names[40]}"


def test_the_counter_counts_host_reads():
    x = torch.arange(4.0)
    with SyncCounter() as counter:
        x.sum().item()
        x[x > 1]
        if x.any():
            pass
        x.nonzero()
        x.tolist()
        x + 1  # no read
    assert counter.names == ["item", "__getitem__", "__bool__", "nonzero", "tolist"]


def test_the_cpu_route_reads_its_live_slots_once_per_step():
    """On a CPU the search runs the live slots only (``COMPACT = "cpu"``): one ``nonzero`` per step, read
    from host memory; the accelerator route has none, so the difference is the steps' count."""
    cpu = {T: host_syncs(T, compact="always") for T in (10, 20)}
    fixed = {T: host_syncs(T) for T in (10, 20)}
    extra = {T: cpu[T].names.count("nonzero") - fixed[T].names.count("nonzero") for T in cpu}
    assert extra[20] - extra[10] == 10, f"live-slot reads at T=10/20: {extra}"
