#!/usr/bin/env python3
"""GPU-readiness figures of ``--criterion bso`` measured on CPU stand-ins (issue 26, item 7).

Writes ``benchmarks/results/gpu_readiness.json`` with the keys

* ``host_syncs_per_forward``: {"10", "20", "40"} → host-device synchronizations of one BSO training
  forward (criterion call, K = 4, 8 sentences, a random 1-layer LSTM, targets of length T), counted
  by :class:`SyncCounter` (a ``TorchFunctionMode``) on the search's accelerator route
  (``search.COMPACT = "never"``: all B·K slots every step; a CPU's default route reads its live
  slots back from host memory once per step, which waits for no device);
* ``rescore_saved_mib`` / ``parallel_pass_saved_mib``: {"16", "32", "64", "128"} → MiB saved for
  backward (``torch.autograd.graph.saved_tensors_hooks``, unique storages, parameters excluded) by
  the criterion's re-scoring, and by one teacher-forced pass of the decoder (features and output
  layer, as token NLL trains) over 2·B rows (the gold and one violating path per sentence), for a
  random 2-layer d = 128 Transformer, 8 sentences, K = 4, the ``log_softmax`` score (issue 26's
  protocol).  A random model violates at almost every step (N ≈ B·T violations), so the
  criterion's ``auto`` re-scoring takes its packed route there (one masked 2T-long row per
  sentence; the incremental route it replaced grew with T²: 9.7 / 26.9 / 85.6 / 300.7 MiB); the
  figures for batches with at most B violations (the parallel route) are printed beside them for
  both decoders, and ``tests/test_rescore_memory.py`` asserts both cases for both decoders;
* ``ddp_max_abs_grad_diff``: {backend → max |gradient of rank 0 − gradient of one process over both
  ranks' batches|} after one BSO update on two gloo ranks (float64), through fairseq's wrappers;
* ``fp16_pruned_optimizer_nonzero``: the pruning benchmark's figure, copied from
  ``benchmarks/results/fp16_pruning.json`` (``python3 -m benchmarks.fp16_pruning``) when that file
  exists, else null;
* ``command`` and ``git_commit``.

All figures are deterministic counts or sizes (no timing):

    OMP_NUM_THREADS=1 python3 -m benchmarks.gpu_readiness
"""

import argparse
import json
import os
from types import SimpleNamespace

import torch
from torch.overrides import TorchFunctionMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: torch functions that read a tensor back to the host (a device synchronization on a GPU)
SYNC_FUNCTIONS = {"__bool__", "item", "__int__", "__float__", "__index__", "tolist", "nonzero", "argwhere",
                  "masked_select", "unique", "unique_consecutive", "cpu", "numpy", "_local_scalar_dense",
                  "equal", "allclose"}


def _bool_index(args) -> bool:
    """Boolean-mask indexing (``x[mask]``, ``x[mask] = v``): its size is read back."""
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in items)


class SyncCounter(TorchFunctionMode):
    """Counts host reads: ``.item()``, ``.tolist()``, ``nonzero``, ``bool()``/``int()``/``float()`` of a
    tensor (``if x.any():`` included), boolean-mask indexing and assignment, ``.cpu()``, ``unique``,
    ``masked_select``, ``repeat_interleave`` with tensor repeats.  ``names`` lists them in order."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in SYNC_FUNCTIONS or (name in ("__getitem__", "__setitem__", "index_put", "index_put_")
                                      and _bool_index(args)) \
                or (name == "repeat_interleave" and len(args) > 1 and torch.is_tensor(args[1])):
            self.names.append(name)
        return func(*args, **(kwargs or {}))

    @property
    def count(self) -> int:
        return len(self.names)


def dictionary(size: int):
    from fairseq.data import Dictionary
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


def lstm_model(d, dim=16, seed=0):
    from fairseq.models.lstm import LSTMDecoder, LSTMEncoder, LSTMModel
    torch.manual_seed(seed)
    enc = LSTMEncoder(d, embed_dim=dim, hidden_size=dim, dropout_in=0.0, dropout_out=0.0, padding_idx=d.pad())
    dec = LSTMDecoder(d, embed_dim=dim, hidden_size=dim, out_embed_dim=dim, dropout_in=0.0, dropout_out=0.0,
                      encoder_output_units=enc.output_units)
    return LSTMModel(enc, dec)


def transformer_model(d, dim=128, layers=2, seed=0):
    import argparse as ap
    from fairseq.models.transformer import TransformerModel, base_architecture
    torch.manual_seed(seed)
    args = ap.Namespace(encoder_layers=layers, decoder_layers=layers, encoder_embed_dim=dim, decoder_embed_dim=dim,
                        encoder_ffn_embed_dim=4 * dim, decoder_ffn_embed_dim=4 * dim, encoder_attention_heads=4,
                        decoder_attention_heads=4, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        max_source_positions=1024, max_target_positions=1024)
    base_architecture(args)
    return TransformerModel.build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))


def batch(d, B, T, seed=0, src_len=None):
    """Sources (left-padded, equal lengths) and targets of exactly T tokens (the last one </s>)."""
    g = torch.Generator().manual_seed(seed)
    n = len(d) - d.nspecial
    src_len = src_len or T
    src = torch.randint(d.nspecial, d.nspecial + n, (B, src_len), generator=g)
    src[:, -1] = d.eos()
    tgt = torch.randint(d.nspecial, d.nspecial + n, (B, T), generator=g)
    tgt[:, -1] = d.eos()
    return {"net_input": {"src_tokens": src, "src_lengths": torch.full((B,), src_len)}, "target": tgt,
            "ntokens": B * T, "id": torch.arange(B)}


def criterion(d, K=4, **options):
    from fairseq_bso.bso.criterion import BSOCriterion
    task = SimpleNamespace(target_dictionary=d, begin_epoch=lambda epoch, model: None)
    return BSOCriterion(task, bso_beam_size=K, bso_curriculum_start=K, **options)


def host_syncs(T: int, K: int = 4, B: int = 8, model=None, compact: str = "never", **options) -> SyncCounter:
    """The host reads of one BSO training forward at target length T (a random LSTM by default), with
    the search's ``COMPACT`` set to ``compact``: ``"never"`` (default) counts the route an accelerator
    takes (all B·K slots at every step); on a CPU the search runs the live slots only, reading them
    back once per step from host memory (no device to wait for)."""
    from fairseq_bso.bso import search
    d = dictionary(40)
    model = model if model is not None else lstm_model(d)
    model.train()
    crit = criterion(d, K, **options)
    sample = batch(d, B, T)
    saved, search.COMPACT = search.COMPACT, compact
    try:
        with SyncCounter() as counter:
            crit(model, sample)
    finally:
        search.COMPACT = saved
    return counter


class SavedBytes:
    """Bytes saved for backward inside the context: unique storages, parameters excluded."""

    def __init__(self, model):
        self.exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen = {}

    def pack(self, t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.exclude:
            self.seen[ptr] = max(self.seen.get(ptr, 0), storage.nbytes())
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    @property
    def mib(self) -> float:
        return sum(self.seen.values()) / 2 ** 20


def first_violations(result):
    """The search result with each sentence's first violation only (a batch with at most B
    violations, as a model whose gold mostly stays on the beam gives)."""
    import dataclasses
    first = result.violation & (result.violation.long().cumsum(1) == 1)
    return dataclasses.replace(result, violation=first, reset=result.reset & first, violation_index=None)


def rescore_memory(T: int, decoder: str = "transformer", K: int = 4, B: int = 8, score: str = "log_softmax",
                   sparse: bool = False):
    """(MiB saved by the criterion's re-scoring, MiB saved by one teacher-forced pass over the 2·B rows
    of the gold and the violating path, the number of violations) for a random model at target length
    T (issue 26's protocol: 2 layers, d = 128 for the Transformer, 8 sentences, 16 source tokens,
    1000 types).  ``sparse``: the search's first violation of each sentence only."""
    from fairseq_bso.bso.costs import COSTS
    from fairseq_bso.bso.search import bso_search, deterministic_decoder, rescore, teacher_forced_features
    d = dictionary(1000)
    model = transformer_model(d) if decoder == "transformer" else lstm_model(d, dim=128)
    model.train()
    sample = batch(d, B, T, src_len=16)
    target = sample["target"]
    with torch.no_grad():
        enc = model.encoder(**sample["net_input"])
    with deterministic_decoder(model.decoder):
        with torch.no_grad():
            result = bso_search(model, enc, target, K, d.pad(), d.eos(), d.bos(), COSTS["zero_one"], score=score,
                                gold_kth="previous")
        if sparse:
            result = first_violations(result)
        with SavedBytes(model) as ours:
            rescore(model, enc, target, result, d.pad(), d.eos())
        rows = torch.cat([target, result.violating_tokens])
        with SavedBytes(model) as one_pass:
            features = teacher_forced_features(model.decoder, model.encoder.reorder_encoder_out(
                enc, torch.arange(B).repeat(2)), rows, d.eos())
            torch.log_softmax(model.decoder.output_layer(features), -1)
    return ours.mib, one_pass.mib, result.violations().size(0)


BACKENDS = {"pytorch_ddp": False, "pytorch_ddp_find_unused": True, "legacy_ddp": None}


def _ddp_worker(rank: int, world: int, port: int, updates: int, out: str, options: dict):
    """One gloo rank: for every backend of :data:`BACKENDS`, the same float64 LSTM on every rank,
    wrapped as fairseq wraps it for ``--ddp-backend`` (``ModuleProxyWrapper(DistributedDataParallel(...,
    device_ids=None))``, or ``ModuleProxyWrapper(LegacyDistributedDataParallel(...))`` with fairseq's
    explicit ``all_reduce_grads``), batch ``rank``, ``updates`` SGD steps; rank 0 saves each backend's
    gradients of the first update and final parameters to ``out``."""
    import torch.distributed as dist
    from fairseq.distributed import LegacyDistributedDataParallel, ModuleProxyWrapper
    from torch.nn.parallel import DistributedDataParallel
    import fairseq_bso  # noqa: F401
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    saved = {}
    try:
        for backend, find_unused in BACKENDS.items():
            d = dictionary(12)
            model = lstm_model(d, dim=8).double()
            if find_unused is None:
                wrapped = ModuleProxyWrapper(LegacyDistributedDataParallel(model, process_group=dist.group.WORLD,
                                                                           buffer_size=2 ** 20))
            else:
                wrapped = ModuleProxyWrapper(DistributedDataParallel(model, device_ids=None,
                                                                     find_unused_parameters=find_unused))
            crit = criterion(d, **options)
            first = None
            for update in range(updates):
                model.zero_grad()
                wrapped.train()
                loss, _, _ = crit(wrapped, batch(d, 4, 7, seed=10 * update + rank))
                loss.backward()
                if find_unused is None:
                    wrapped.all_reduce_grads()
                if first is None:
                    first = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
                with torch.no_grad():
                    for p in model.parameters():
                        p -= 0.1 * p.grad
            saved[backend] = {"grads": first, "params": {n: p.detach().clone() for n, p in model.named_parameters()}}
        if rank == 0:
            torch.save(saved, out)
    finally:
        dist.destroy_process_group()


def single_process(updates: int, world: int = 2, **options):
    """The same updates in one process: the gradient of each update is the mean of the ranks'
    batches' gradients (what fairseq's --update-freq 2 accumulates, normalized alike)."""
    import fairseq_bso  # noqa: F401
    d = dictionary(12)
    model = lstm_model(d, dim=8).double()
    crit = criterion(d, **options)
    first = None
    for update in range(updates):
        total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for rank in range(world):
            model.zero_grad()
            model.train()
            loss, _, _ = crit(model, batch(d, 4, 7, seed=10 * update + rank))
            loss.backward()
            for n, p in model.named_parameters():
                total[n] += p.grad / world
        if first is None:
            first = total
        with torch.no_grad():
            for n, p in model.named_parameters():
                p -= 0.1 * total[n]
    return first, {n: p.detach().clone() for n, p in model.named_parameters()}


def ddp_run(tmp: str, updates: int = 3, **options):
    """({backend: rank 0's first gradients and final parameters}, one process's (gradients, parameters))."""
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = os.path.join(tmp, "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, port, updates, out, options), nprocs=2, join=True)
    return torch.load(out), single_process(updates, **options)


def ddp_max_abs_grad_diff(tmp: str, updates: int = 1) -> dict:
    """backend → max |rank 0's gradient − one process's| after ``updates`` BSO updates (float64)."""
    got, (grads, _) = ddp_run(tmp, updates=updates)
    return {backend: max((run["grads"][n] - grads[n]).abs().max().item() for n in grads)
            for backend, run in got.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "gpu_readiness.json"))
    args = parser.parse_args()
    import fairseq_bso  # noqa: F401
    results = {"ddp_max_abs_grad_diff": None, "host_syncs_per_forward": {}, "rescore_saved_mib": {},
               "parallel_pass_saved_mib": {}, "fp16_pruned_optimizer_nonzero": None}
    for T in (10, 20, 40):
        counter = host_syncs(T)
        results["host_syncs_per_forward"][str(T)] = counter.count
        print(f"T={T}: {counter.count} host reads {counter.names}", flush=True)
    for T in (16, 32, 64, 128):
        ours, one_pass, n = rescore_memory(T)
        results["rescore_saved_mib"][str(T)] = round(ours, 2)
        results["parallel_pass_saved_mib"][str(T)] = round(one_pass, 2)
        print(f"T={T}: re-scoring {ours:.1f} MiB, one teacher-forced pass over 2B rows {one_pass:.1f} MiB "
              f"({n} violations)", flush=True)
        for decoder in ("transformer", "lstm"):  # printed only: batches with at most B violations
            ours, one_pass, n = rescore_memory(T, decoder, sparse=True)
            print(f"  {decoder}, first violation per sentence: re-scoring {ours:.1f} MiB, one pass {one_pass:.1f} "
                  f"MiB ({n} violations)", flush=True)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        results["ddp_max_abs_grad_diff"] = ddp_max_abs_grad_diff(tmp)
    print(f"DDP: {results['ddp_max_abs_grad_diff']}", flush=True)
    pruning = os.path.join(ROOT, "benchmarks", "results", "fp16_pruning.json")
    if os.path.exists(pruning):  # the pruning benchmark's count (it trains through fairseq-train)
        with open(pruning) as f:
            results["fp16_pruned_optimizer_nonzero"] = json.load(f).get("fp16_pruned_optimizer_nonzero")
    from benchmarks.common import command_line, git_commit, write_file

    results["command"] = command_line()
    results["git_commit"] = git_commit()
    write_file(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
