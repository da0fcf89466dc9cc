"""``--criterion bso`` under fairseq's DDP wrappers: two gloo ranks on CPU (issue 26 item 1).

Each rank trains the same float64 LSTM on its own batch through fairseq's own wrapping
(``ModuleProxyWrapper(DistributedDataParallel(model, device_ids=None))`` as ``--ddp-backend
pytorch_ddp``/``c10d`` builds it, with and without ``--find-unused-parameters``, and
``ModuleProxyWrapper(LegacyDistributedDataParallel(model))`` with its explicit all-reduce as
``legacy_ddp``/``no_c10d`` does); after three SGD updates rank 0's first gradients and final weights
equal one process whose every update averages the gradients of both ranks' batches.  Before the
criterion ran its passes inside the wrapper's forward, pytorch_ddp left BSO's gradients un-reduced
(issue 26 measured max |g0 − g1| = 3.0)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gpu_readiness import BACKENDS, ddp_run  # noqa: E402


def test_bso_gradients_are_all_reduced(tmp_path):
    got, (grads, params) = ddp_run(str(tmp_path), updates=3, bso_nll_weight=0.5)
    assert set(got) == set(BACKENDS)
    scale = max(g.abs().max().item() for g in grads.values())
    assert scale > 0
    for backend, run in got.items():
        for name in grads:  # float64: summation order only
            diff = (run["grads"][name] - grads[name]).abs().max().item()
            assert diff <= 1e-12 * max(scale, 1.0), \
                f"{backend} {name}: gradient diff {diff:.3e} (largest {scale:.3e})"
            diff = (run["params"][name] - params[name]).abs().max().item()
            assert diff <= 1e-10, f"{backend} {name}: weights after 3 updates differ by {diff:.3e}"


def test_unsupported_wrappers_are_refused():
    from fairseq_bso.bso.criterion import unwrap

    class FullyShardedDataParallel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = torch.nn.Linear(1, 1)

    with pytest.raises(ValueError, match="use --ddp-backend pytorch_ddp"):
        unwrap(FullyShardedDataParallel())
