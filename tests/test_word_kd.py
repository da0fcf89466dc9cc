"""word_kd: the loss against the formula computed independently, α = 0 is cross_entropy, no teacher in
checkpoints, dictionaries checked."""

import os

import pytest
import torch

import harness

SMALL = ["--arch", "lstm", "--encoder-embed-dim", "8", "--encoder-hidden-size", "8", "--decoder-embed-dim", "8",
         "--decoder-hidden-size", "8", "--decoder-out-embed-dim", "8", "--dropout", "0.0"]


@pytest.fixture(scope="module")
def setup(word_order_bin, nll_checkpoint):
    task, _, cfg, sample = harness.task_and_valid_batch(nll_checkpoint, word_order_bin)
    torch.manual_seed(3)
    student = task.build_model(cfg.model)  # a fresh (untrained) student of the same shape
    student.eval()
    return task, student, sample, nll_checkpoint


def formula(student, teacher_path, sample, alpha, topk, eps, pad):
    """(1 − α)·NLL_ε + α·(−Σ q log p), written out with explicit loops over positions."""
    from fairseq import checkpoint_utils
    teacher = checkpoint_utils.load_model_ensemble([teacher_path])[0][0].eval()
    logp = torch.log_softmax(student(**sample["net_input"])[0], -1)
    with torch.no_grad():
        t_logits = teacher(**sample["net_input"])[0]
    target = sample["target"]
    V = logp.size(-1)
    nll = kd = 0.0
    for b in range(target.size(0)):
        for j in range(target.size(1)):
            y = target[b, j].item()
            if y == pad:
                continue
            smooth = -logp[b, j].sum()
            nll = nll + (1 - eps - eps / (V - 1)) * -logp[b, j, y] + eps / (V - 1) * smooth
            q = torch.softmax(t_logits[b, j], -1)
            if topk:
                keep = torch.argsort(t_logits[b, j], descending=True)[:topk]
                q = torch.zeros(V)
                q[keep] = torch.softmax(t_logits[b, j, keep], -1)
            kd = kd - sum(q[v] * logp[b, j, v] for v in range(V))
    return (1 - alpha) * nll + alpha * kd


@pytest.mark.parametrize("alpha,topk,eps", [(0.5, 0, 0.0), (1.0, 3, 0.0), (0.3, 0, 0.1), (0.7, 5, 0.2)])
def test_loss_equals_formula(setup, alpha, topk, eps):
    from fairseq_bso.distill.word_kd import WordKDCriterion
    task, student, sample, teacher_path = setup
    crit = WordKDCriterion(task, kd_teacher_path=teacher_path, kd_alpha=alpha, kd_topk=topk, kd_label_smoothing=eps)
    loss, sample_size, _ = crit(student, sample)
    expected = formula(student, teacher_path, sample, alpha, topk, eps, task.target_dictionary.pad())
    assert sample_size == sample["ntokens"]
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)


def test_alpha_zero_equals_cross_entropy(setup):
    from fairseq.criterions.cross_entropy import CrossEntropyCriterion
    from fairseq_bso.distill.word_kd import WordKDCriterion
    task, student, sample, teacher_path = setup
    ours = WordKDCriterion(task, kd_teacher_path=teacher_path, kd_alpha=0.0)(student, sample)
    theirs = CrossEntropyCriterion(task, sentence_avg=False)(student, sample)
    assert ours[0].item() == pytest.approx(theirs[0].item(), rel=1e-6)
    assert ours[1] == theirs[1]


def test_teacher_is_outside_the_student(setup):
    from fairseq_bso.distill.word_kd import WordKDCriterion
    task, student, sample, teacher_path = setup
    crit = WordKDCriterion(task, kd_teacher_path=teacher_path, kd_alpha=0.5)
    assert list(crit.parameters()) == [] and crit.state_dict() == {}
    loss, _, _ = crit(student, sample)
    loss.backward()
    teacher = crit._teacher[0]
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_fairseq_train_word_kd_saves_no_teacher(word_order_bin, nll_checkpoint, tmp_path):
    proc = harness.train(word_order_bin, str(tmp_path), arch=SMALL,
                         criterion=["--criterion", "word_kd", "--kd-teacher-path", nll_checkpoint,
                                    "--kd-alpha", "0.5", "--kd-topk", "4"], max_epoch=2)
    assert "kd_loss" in proc.stdout
    state = torch.load(os.path.join(tmp_path, "checkpoint_last.pt"), weights_only=False)
    teacher_state = torch.load(nll_checkpoint, weights_only=False)["model"]
    assert state.get("criterion") is None
    student_size = sum(v.numel() for v in state["model"].values())
    teacher_size = sum(v.numel() for v in teacher_state.values())
    assert student_size < teacher_size  # the student's own (smaller) weights only
    assert all(not k.startswith("_teacher") for k in state["model"])


def test_teacher_with_other_dictionaries_is_refused(nll_checkpoint, tmp_path):
    folder = str(tmp_path)
    harness.make_word_order_data(folder, n_train=20, n_valid=4, n_test=4)
    with open(os.path.join(folder, "train.tgt"), "a") as f:
        f.write("zebra\n")
    with open(os.path.join(folder, "train.src"), "a") as f:
        f.write("zebra\n")
    data = harness.preprocess(folder)
    proc = harness.train(data, str(tmp_path / "ckpt"), arch=SMALL, check=False,
                         criterion=["--criterion", "word_kd", "--kd-teacher-path", nll_checkpoint])
    assert proc.returncode != 0
    assert "the teacher's source dictionary" in proc.stdout and "--srcdict/--tgtdict" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--kd-alpha", "1.5"], "--kd-alpha must be a number in [0, 1], got 1.5"),
    (["--kd-alpha", "nan"], "--kd-alpha must be a number in [0, 1], got nan"),
    (["--kd-alpha", "inf"], "--kd-alpha must be a number in [0, 1], got inf"),
    (["--kd-topk", "-1"], "--kd-topk must be >= 0"),
    ([], "needs --kd-teacher-path"),
])
def test_bad_options(word_order_bin, nll_checkpoint, tmp_path, args, message):
    teacher = [] if not args else ["--kd-teacher-path", nll_checkpoint]
    proc = harness.train(word_order_bin, str(tmp_path), arch=SMALL, check=False,
                         criterion=["--criterion", "word_kd", *teacher, *args])
    assert proc.returncode != 0 and message in proc.stdout


@pytest.mark.parametrize("topk", [0, 3])
def test_distillation_term_keeps_only_k_teacher_values(topk):
    """--kd-topk k: the term against a float64 loop over positions and tokens, and no operation of it makes a
    tensor of B·T·V elements (only B·T·k teacher values); without --kd-topk, q is the dense softmax."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from fairseq_bso.distill.word_kd import distillation_term

    g = torch.Generator().manual_seed(0)
    B, T, V = 2, 5, 11
    teacher_logits = torch.randn(B, T, V, generator=g)
    lprobs = torch.log_softmax(torch.randn(B, T, V, generator=g), -1)
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, 3:] = True

    class Shapes(TorchDispatchMode):
        numels = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if torch.is_tensor(t):
                    self.numels.append((str(func), t.numel()))
            return out

    with Shapes() as mode:
        got = distillation_term(teacher_logits, lprobs, topk, pad)
    want = 0.0
    for b in range(B):
        for t in range(T):
            if pad[b, t]:
                continue
            logits = teacher_logits[b, t].double()
            keep = torch.argsort(logits, descending=True)[:topk] if topk else torch.arange(V)
            q = torch.softmax(logits[keep], -1)
            want -= float((q * lprobs[b, t, keep].double()).sum())
    assert abs(got.item() - want) <= 1e-6 * abs(want), f"k={topk}: {got.item()!r}, float64 loop {want!r}"
    dense = [f for f, n in mode.numels if n == B * T * V]
    if topk:
        assert not dense, f"--kd-topk {topk}: B·T·V tensors made by {dense}"
    else:
        assert dense, "the dense path should build q over the vocabulary"
