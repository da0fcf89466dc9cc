"""``--lean-greedy`` (``fairseq_bso.greedy``): the hypotheses of fairseq's generator at ``--beam 1``, through
``fairseq-generate`` and in process, and a clear error for every option it does not implement."""

import re

import pytest
import torch

import harness

LEAN = ["--task", "constrained_beam_training", "--lean-greedy"]


@pytest.fixture(scope="module")
def varied_checkpoint(nll_checkpoint, tmp_path_factory):
    """The tiny NLL model with noise on every weight, so that its greedy outputs end at different steps (the
    trained tiny model ends almost every sentence after one word, and batches would never shrink)."""
    state = torch.load(nll_checkpoint, map_location="cpu", weights_only=False)
    noise = torch.Generator().manual_seed(0)
    for tensor in state["model"].values():
        if tensor.is_floating_point():
            tensor.add_(torch.randn(tensor.shape, generator=noise, dtype=tensor.dtype))
    path = str(tmp_path_factory.mktemp("varied") / "checkpoint.pt")
    torch.save(state, path)
    return path


def _lengths(printed):
    return {len(line.split("\t")[2].split()) for line in printed if line.startswith("H-")}


def _printed(out: str):
    """fairseq-generate's per-sentence lines (source, target, hypothesis, detokenized, positional scores)."""
    return sorted(line for line in out.splitlines() if re.match(r"[STHDP]-\d+\t", line))


@pytest.mark.parametrize("options", [
    [],                                                                  # batches of 8: sentences finish apart
    ["--batch-size", "1"],
    ["--unkpen", "2", "--lenpen", "0.5", "--min-len", "3"],
    ["--max-len-a", "0", "--max-len-b", "3"],                            # </s> forced at the maximum length
    ["--unnormalized", "--temperature", "0.7"],
], ids=["batched", "batch1", "penalties", "max-len", "unnormalized"])
def test_lean_greedy_prints_what_fairseqs_generator_prints(word_order_bin, varied_checkpoint, options):
    reference = _printed(harness.generate(word_order_bin, varied_checkpoint, options, beam=1).stdout)
    lean = _printed(harness.generate(word_order_bin, varied_checkpoint, [*LEAN, *options], beam=1).stdout)
    assert len(reference) == 5 * 20, f"expected S/T/H/D/P lines for 20 test sentences, got {len(reference)}"
    if "--max-len-b" not in options:
        assert len(_lengths(reference)) > 2, f"hypothesis lengths {_lengths(reference)}: batches never shrink"
    different = [(r, g) for r, g in zip(reference, lean) if r != g]
    assert len(lean) == len(reference) and not different, (
        f"{len(different)} of {len(reference)} lines differ, e.g. fairseq {different[0][0]!r} vs lean "
        f"{different[0][1]!r}" if different else f"{len(lean)} lines vs fairseq's {len(reference)}")


def test_lean_greedy_hypotheses_equal_the_generators_in_process(word_order_bin, varied_checkpoint):
    """In float64: tokens exactly; scores, positional scores and attention to within a few float64 roundings
    of their magnitude (the same operations run in the same order, so they are equal on any CPU we know of)."""
    from fairseq.sequence_generator import SequenceGenerator
    from fairseq_bso.greedy import GreedyGenerator

    task, model, _, sample = harness.task_and_valid_batch(varied_checkpoint, word_order_bin)
    model.double().eval()
    for kwargs in ({"max_len_a": 1.5, "max_len_b": 5}, {"max_len_a": 0, "max_len_b": 3, "len_penalty": 0.5}):
        with torch.no_grad():
            reference = SequenceGenerator([model], task.target_dictionary, beam_size=1, **kwargs).generate(
                [model], sample)
            lean = GreedyGenerator([model], task.target_dictionary, beam_size=1, **kwargs).generate([model], sample)
        assert len(lean) == len(reference) == sample["id"].numel()
        lengths = set()
        for i, (ref, got) in enumerate(zip(reference, lean)):
            assert len(got) == 1, f"sentence {i}: {len(got)} hypotheses"
            ref, got = ref[0], got[0]
            assert torch.equal(ref["tokens"], got["tokens"]), f"{kwargs} sentence {i}: {ref['tokens']} vs {got['tokens']}"
            lengths.add(ref["tokens"].numel())
            for key in ("score", "positional_scores", "attention"):
                scale = float(ref[key].abs().max()) if ref[key].numel() else 0.0
                tol = 8 * torch.finfo(torch.float64).eps * max(scale, 1.0)
                diff = float((ref[key] - got[key]).abs().max()) if ref[key].numel() else 0.0
                assert ref[key].shape == got[key].shape and diff <= tol, (
                    f"{kwargs} sentence {i} {key}: fairseq {ref[key]} vs lean {got[key]} (max diff {diff}, tol {tol})")
        if kwargs["max_len_a"]:
            assert len(lengths) > 1, f"every hypothesis has the same length {lengths}: the batch never shrank"


@pytest.mark.parametrize("options, message", [
    (["--beam", "5"], "needs --beam 1"),
    (["--beam", "1", "--nbest", "2"], "--nbest 1"),
    (["--beam", "1", "--sampling"], "--sampling"),
    (["--beam", "1", "--no-repeat-ngram-size", "2"], "--no-repeat-ngram-size"),
    (["--beam", "1", "--print-alignment"], "--print-alignment"),
    (["--beam", "1", "--bso-decoding"], "cannot be combined"),
])
def test_lean_greedy_refuses_what_it_does_not_implement(word_order_bin, nll_checkpoint, options, message):
    proc = harness.generate(word_order_bin, nll_checkpoint, [*LEAN, *options], beam=1, check=False)
    assert proc.returncode != 0 and message in proc.stdout, (
        f"expected a failure naming {message!r}, got exit {proc.returncode}:\n{proc.stdout[-1500:]}")
