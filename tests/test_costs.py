"""SB-Δ on tensors against sacrebleu.sentence_bleu itself."""

import random

import pytest
import sacrebleu
import torch

from fairseq_bso.bso.costs import COSTS, segment_bleu


def reference_bleu(hyp, ref):
    return sacrebleu.sentence_bleu(" ".join(map(str, hyp)), [" ".join(map(str, ref))],
                                   smooth_method="exp", tokenize="none").score / 100


def test_segment_bleu_matches_sacrebleu_on_random_segments():
    rng = random.Random(0)
    length = 12
    hyps, refs, hmask, rmask, expected = [], [], [], [], []
    for _ in range(400):
        vocab = rng.randint(2, 6)
        start_h, start_r = rng.randint(0, 5), rng.randint(0, 5)
        len_h, len_r = rng.randint(1, length - start_h), rng.randint(1, length - start_r)
        h = [rng.randint(4, 4 + vocab) for _ in range(length)]
        r = [rng.randint(4, 4 + vocab) for _ in range(length)]
        hyps.append(h)
        refs.append(r)
        hmask.append([start_h <= i < start_h + len_h for i in range(length)])
        rmask.append([start_r <= i < start_r + len_r for i in range(length)])
        expected.append(reference_bleu(h[start_h:start_h + len_h], r[start_r:start_r + len_r]))
    got = segment_bleu(torch.tensor(hyps), torch.tensor(refs), torch.tensor(hmask), torch.tensor(rmask))
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    assert max(expected) == pytest.approx(1.0) and min(expected) == 0.0  # both ends covered


def test_deltas():
    gold = torch.tensor([[5, 6, 7, 8]])
    mask = torch.tensor([[True, True, True, True]])
    assert COSTS["sentence_bleu"](gold, gold, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert COSTS["sentence_bleu"](torch.tensor([[9, 9, 9, 9]]), gold, mask).item() == 1.0
    assert COSTS["zero_one"](gold, gold, mask).item() == 1.0
