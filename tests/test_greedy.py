"""``--lean-greedy`` (``fairseq_bso.distill.greedy``): the hypotheses of fairseq's generator at ``--beam 1``, through
``fairseq-generate`` and in process, and a clear error for every option it does not implement."""

import copy
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
    lean_run = harness.generate(word_order_bin, varied_checkpoint, [*LEAN, *options], beam=1)
    assert "the decoder step is LSTMStep" in lean_run.stdout, lean_run.stdout[-2000:]
    lean = _printed(lean_run.stdout)
    assert len(reference) == 5 * 20, f"expected S/T/H/D/P lines for 20 test sentences, got {len(reference)}"
    if "--max-len-b" not in options:
        assert len(_lengths(reference)) > 2, f"hypothesis lengths {_lengths(reference)}: batches never shrink"
    different = [(r, g) for r, g in zip(reference, lean) if r != g]
    assert len(lean) == len(reference) and not different, (
        f"{len(different)} of {len(reference)} lines differ, e.g. fairseq {different[0][0]!r} vs lean "
        f"{different[0][1]!r}" if different else f"{len(lean)} lines vs fairseq's {len(reference)}")


def test_seq_kd_with_lean_greedy_writes_the_corpus_of_fairseqs_generator(word_order_bin, varied_checkpoint, tmp_path):
    """``--task seq_kd`` has ``--lean-greedy`` as every plugin translation task does (the LeanGreedy mixin): the
    Seq-KD corpus it writes with the lean decoder is the one fairseq's generator writes at ``--beam 1``, sources
    and hypotheses byte for byte, scores to within the float32 rounding of their magnitude (and the file's 6
    decimals); the log shows which decoder ran."""
    def corpus(name, extra):
        out_dir = tmp_path / name
        proc = harness.generate(word_order_bin, varied_checkpoint, [
            "--task", "seq_kd", "--kd-output-dir", str(out_dir), "--kd-write-scores", *extra], beam=1)
        return proc.stdout, {n: (out_dir / f"test.{n}").read_text(encoding="utf-8") for n in ("src", "tgt", "score")}

    plain_log, plain = corpus("plain", [])
    lean_log, lean = corpus("lean", ["--lean-greedy"])
    assert "the decoder step is LSTMStep" in lean_log, lean_log[-2000:]
    assert "LSTMStep" not in plain_log, plain_log[-2000:]
    hyps = plain["tgt"].splitlines()
    assert len(hyps) == 20 and len({len(h.split()) for h in hyps}) > 2, (
        f"{len(hyps)} hypotheses of lengths {sorted({len(h.split()) for h in hyps})}: the batches never shrink")
    for name in ("src", "tgt"):
        different = [(i, a, b) for i, (a, b) in enumerate(zip(plain[name].splitlines(), lean[name].splitlines()))
                     if a != b]
        assert plain[name] == lean[name], (
            f"test.{name}: {len(different)} lines differ, e.g. line {different[0][0]}: fairseq {different[0][1]!r} vs "
            f"lean {different[0][2]!r}" if different else f"test.{name}: the files differ in length")
    ref, got = ([float(x) for x in c["score"].splitlines()] for c in (plain, lean))
    tol = [1e-6 + 8 * torch.finfo(torch.float32).eps * abs(r) for r in ref]
    off = [(i, r, g) for i, (r, g, t) in enumerate(zip(ref, got, tol)) if abs(r - g) > t]
    assert len(ref) == len(got) == 20 and not off, f"scores differ (line, fairseq, lean): {off[:5]}"


def test_lean_greedy_hypotheses_equal_the_generators_in_process(word_order_bin, varied_checkpoint):
    """In float64: tokens exactly; scores, positional scores and attention to within a few float64 roundings
    of their magnitude (the same operations run in the same order, so they are equal on any CPU we know of)."""
    from fairseq.sequence_generator import SequenceGenerator
    from fairseq_bso.distill.greedy import GreedyGenerator

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


def _lstm(**overrides):
    """A random fairseq LSTMModel (float64, inference mode) built by fairseq's own ``build_model``."""
    import argparse

    from fairseq.data import Dictionary
    from fairseq.models.lstm import LSTMModel

    dictionary = Dictionary()
    for i in range(40):
        dictionary.add_symbol(f"w{i}")

    class Task:
        source_dictionary = target_dictionary = dictionary

    settings = dict(dropout=0.3, encoder_embed_dim=12, encoder_hidden_size=10, decoder_embed_dim=8,
                    decoder_hidden_size=10, decoder_out_embed_dim=10, adaptive_softmax_cutoff=None, encoder_layers=1,
                    decoder_layers=1, criterion="cross_entropy")
    args = argparse.Namespace(**{**settings, **overrides})
    torch.manual_seed(0)
    model = LSTMModel.build_model(args, Task())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.double().eval(), dictionary


@pytest.mark.parametrize("config", [
    {},                                                                             # fc_out, attention
    {"encoder_bidirectional": True, "decoder_out_embed_dim": 6},                    # encoder projections, additional_fc
    {"encoder_layers": 2, "decoder_layers": 2, "share_decoder_input_output_embed": True, "decoder_out_embed_dim": 8},
    {"decoder_attention": "0"},
    {"need_attn": False},                                                           # fairseq-generate's setting
    {"residuals": True, "encoder_layers": 2, "decoder_layers": 2},
], ids=["plain", "bidirectional-fc", "two-layers-shared", "no-attention", "no-need-attn", "residuals"])
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "no-padding"])
def test_lstm_step_equals_fairseqs_decoder_step(config, padded):
    """``LSTMStep`` against ``LSTMDecoder.forward`` with its incremental state, step by step in float64, with and
    without left padding, through a reorder that drops a sentence (as the greedy search does when one finishes).
    Equality is exact: both run the same operations on tensors of the same shapes and strides, so any difference
    (a skipped float32 round trip in the attention, say, which moves float64 log-probs by about 1e-7) is a
    change of computation, not rounding noise."""
    from fairseq_bso.distill.greedy import LSTMStep

    config = dict(config)
    residuals = config.pop("residuals", False)
    need_attn = config.pop("need_attn", True)
    model, dictionary = _lstm(**config)
    model.decoder.residuals = residuals
    model.decoder.need_attn = need_attn
    assert LSTMStep.unsupported([model]) is None, LSTMStep.unsupported([model])
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([7, 6, 4] if padded else [7, 7, 7])  # longest first, as fairseq batches them
    src = torch.full((3, 7), dictionary.pad(), dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):  # left-padded, as fairseq collates sources
        src[row, 7 - n:] = torch.randint(dictionary.nspecial, len(dictionary), (n,), generator=gen)
    prev = torch.randint(dictionary.nspecial, len(dictionary), (3, 6), generator=gen)
    prev[:, 0] = dictionary.eos()
    with torch.no_grad():
        encoder_out = model.encoder(src, lengths)
        step, incremental = LSTMStep(model.decoder), {}
        state = step.start(encoder_out)
        assert (state[1] is not None) == padded, f"padding mask {state[1]} for a batch of lengths {lengths}"
        for t in range(6):
            if t == 3:  # sentence 1 finished: keep rows 2 and 0
                order = torch.tensor([2, 0])
                prev = prev[order]
                model.decoder.reorder_incremental_state(incremental, order)
                encoder_out = model.encoder.reorder_encoder_out(encoder_out, order)
                state = step.reorder(state, order)
            out = model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=incremental)
            ref = model.get_normalized_probs((out[0][:, -1:, :], out[1]), log_probs=True)[:, -1, :]
            got, attn, state = step(prev[:, t], state)
            assert got.dtype == ref.dtype and got.shape == ref.shape, (got.dtype, ref.dtype, got.shape, ref.shape)
            assert torch.equal(got, ref), (f"{config} step {t}: log-probs differ by {float((got - ref).abs().max())}"
                                           f"\n{got}\n{ref}")
            if out[1] is None:
                assert attn is None, f"{config} step {t}: attention returned where LSTMDecoder returns none"
            else:
                ref_attn = out[1][:, -1, :]
                assert torch.equal(attn, ref_attn), (
                    f"{config} step {t}: attention differs by {float((attn - ref_attn).abs().max())}")


def test_lstm_step_refuses_what_it_does_not_write_out():
    """A subclass, a forward hook or dropout that applies: ``LSTMStep`` steps aside (fairseq's forward_decoder)."""
    from fairseq.models.lstm import LSTMModel
    from fairseq_bso.distill.greedy import LSTMStep

    model, _ = _lstm()
    assert LSTMStep.unsupported([model]) is None, LSTMStep.unsupported([model])
    assert "an ensemble of 2" in LSTMStep.unsupported([model, model])
    handle = model.decoder.layers[0].register_forward_hook(lambda *args: None)
    assert LSTMStep.unsupported([model]) == "forward hooks on the decoder"
    handle.remove()
    model.decoder.dropout_out_module.train()
    assert "dropout applies" in (LSTMStep.unsupported([model]) or ""), LSTMStep.unsupported([model])
    model.eval()

    class Mine(LSTMModel):
        pass

    model.__class__ = Mine
    assert "is not fairseq's LSTMModel" in (LSTMStep.unsupported([model]) or ""), LSTMStep.unsupported([model])


def test_lean_greedy_without_lstm_step_decodes_through_fairseq(word_order_bin, varied_checkpoint, caplog):
    """An ensemble is not what ``LSTMStep`` implements: the lean decoder says so and decodes through fairseq's
    ``forward_decoder``, with the generator's hypotheses; a single LSTM model takes ``LSTMStep``."""
    import logging

    from fairseq.sequence_generator import SequenceGenerator
    from fairseq_bso.distill.greedy import GreedyGenerator

    task, model, _, sample = harness.task_and_valid_batch(varied_checkpoint, word_order_bin)
    model.double().eval()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.9)
    with caplog.at_level(logging.INFO, logger="fairseq_bso.distill.greedy"), torch.no_grad():
        reference = SequenceGenerator([model, other], task.target_dictionary, beam_size=1).generate([model], sample)
        lean = GreedyGenerator([model, other], task.target_dictionary, beam_size=1).generate([model], sample)
        assert "forward_decoder (an ensemble of 2 models)" in caplog.text, caplog.text
        GreedyGenerator([model], task.target_dictionary, beam_size=1).generate([model], sample)
        assert "the decoder step is LSTMStep" in caplog.text, caplog.text
    assert len(reference) == len(lean) == sample["id"].numel(), (len(reference), len(lean))
    for i, (ref, got) in enumerate(zip(reference, lean)):
        assert torch.equal(ref[0]["tokens"], got[0]["tokens"]), f"sentence {i}: {ref[0]['tokens']} vs {got[0]['tokens']}"
        ref_scores, got_scores = ref[0]["positional_scores"], got[0]["positional_scores"]
        tol = 8 * torch.finfo(torch.float64).eps * max(float(ref_scores.abs().max()), 1.0)
        diff = float((ref_scores - got_scores).abs().max())
        assert diff <= tol, f"sentence {i}: positional scores {ref_scores} vs {got_scores} (diff {diff}, tol {tol})"
