"""Pruning with any task (``fairseq_bso.prune.tasks``): the plugin's pruned twins of ``translation`` and
``language_modeling`` and a user's own task through ``fairseq-train``: the target sparsity exactly, the same zeros
through a resume, ``--update-freq``, two gloo ranks, gradients masked before fairseq clips them, and
``fairseq-bso-prune stats|export`` on their checkpoints, the export loading in stock fairseq without the plugin."""

import math
import os
import socket
import subprocess

import pytest
import torch

import harness
from fairseq_bso.prune.masks import KINDS, prunable

LM_ARCH = ["--arch", "transformer_lm", "--decoder-layers", "1", "--decoder-embed-dim", "16",
           "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2", "--tokens-per-sample", "16",
           "--dropout", "0.0"]
MY_TASK_DIR = os.path.join(harness.ROOT, "examples", "pruning", "my_task")


@pytest.fixture(scope="module")
def lm_bin(tmp_path_factory):
    """Tiny binarized language-modeling data (the word-ordering targets as running text)."""
    folder = str(tmp_path_factory.mktemp("lm_data"))
    for split, n, seed in (("train", 200, 1), ("valid", 20, 2), ("test", 20, 3)):
        harness.write_atomic(os.path.join(folder, f"{split}.txt"), harness.make_sentences(n, seed))
    dest = os.path.join(folder, "bin")
    harness.run(["fairseq-preprocess", "--only-source", "--trainpref", f"{folder}/train.txt", "--validpref",
                 f"{folder}/valid.txt", "--testpref", f"{folder}/test.txt", "--destdir", dest, "--workers", "1"])
    return dest


def zero_sets(ckpt):
    """{name: bool tensor of exact zeros} of the weight matrices the default --prune-classes select."""
    return {n: w == 0 for n, w in prunable(torch.load(ckpt, map_location="cpu")["model"].items(), KINDS).items()}


def check_target_sparsity(ckpt, ratio):
    zeros = zero_sets(ckpt)
    n_zero, total = sum(int(z.sum()) for z in zeros.values()), sum(z.numel() for z in zeros.values())
    assert n_zero == math.floor(ratio * total), \
        f"{ckpt}: {n_zero} of {total} weights zero ({n_zero / total:.2%}), want floor({ratio}·{total})"
    return zeros


def assert_same_zeros(before, after, what):
    changed = {n: int((before[n] ^ after[n]).sum()) for n in before if not torch.equal(before[n], after[n])}
    assert not changed, f"{what}: zero positions changed (name: count) {changed}"


CASES = {  # task: (data fixture, model options, extra options, stock command that loads the export)
    "translation_pruned": ("word_order_bin", harness.TINY_LSTM, ["--update-freq", "2"], "fairseq-generate"),
    "language_modeling_pruned": ("lm_bin", LM_ARCH, [], "fairseq-eval-lm"),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_pruned_twin_trains_resumes_and_exports_to_stock_fairseq(task, request, tmp_path):
    """fairseq-train --task <base>_pruned --prune-ratio 0.5: exactly floor(0.5·N) zeros after epoch 1; the resumed
    epoch 2 re-derives the masks from those zeros and keeps exactly them; fairseq-bso-prune stats reads the
    checkpoint and export writes one that stock fairseq-generate / fairseq-eval-lm load without --user-dir."""
    fixture, arch, extra, stock = CASES[task]
    data = request.getfixturevalue(fixture)
    save = str(tmp_path / "ckpt")
    argv = ["--task", task, "--prune-ratio", "0.5", *extra]
    harness.train(data, save, extra=argv, arch=arch, max_epoch=1)
    before = check_target_sparsity(f"{save}/checkpoint_last.pt", 0.5)
    out = harness.train(data, save, extra=argv, arch=arch, max_epoch=2).stdout
    assert "masks re-derived from the exact zeros of the weights" in out and "(resume)" in out, out[-3000:]
    assert "pruned to" not in out, out[-3000:]
    assert_same_zeros(before, check_target_sparsity(f"{save}/checkpoint_last.pt", 0.5), f"{task} resumed")

    stats = harness.run(["fairseq-bso-prune", "stats", f"{save}/checkpoint_last.pt"]).stdout
    assert "[total]" in stats and "50.00%" in stats, stats
    exported = str(tmp_path / "exported.pt")
    harness.run(["fairseq-bso-prune", "export", f"{save}/checkpoint_last.pt", exported])
    state = torch.load(exported, map_location="cpu", weights_only=False)
    base = task[: -len("_pruned")]
    assert state["cfg"]["task"]["_name"] == base and "prune_ratio" not in state["cfg"]["task"], state["cfg"]["task"]
    if stock == "fairseq-generate":
        proc = harness.generate(data, exported, user_dir=False, beam=2)
        assert proc.stdout.count("\nH-") == 20, proc.stdout[-2000:]
    else:
        proc = harness.run(["fairseq-eval-lm", data, "--path", exported, "--cpu", "--gen-subset", "test",
                            "--tokens-per-sample", "16", "--batch-size", "8"])
        assert "Loss (base 2)" in proc.stdout, proc.stdout[-2000:]
    assert "fairseq_bso" not in proc.stdout, proc.stdout[-2000:]  # the plugin was never imported


def test_a_users_own_task_gets_a_pruned_twin_in_its_user_dir(word_order_bin, tmp_path):
    """examples/pruning/my_task registers its own task and, in two lines, my_task_pruned; fairseq-train with that
    --user-dir prunes; export names the user's task (with --user-dir), which fairseq-generate then loads."""
    save = str(tmp_path / "ckpt")
    harness.run(["fairseq-train", word_order_bin, "--user-dir", MY_TASK_DIR, "--task", "my_task_pruned",
                 "--my-option", "3", "--prune-ratio", "0.5", *harness.TINY_LSTM, *harness.COMMON,
                 "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.005", "--batch-size", "16",
                 "--max-epoch", "1", "--save-dir", save, "--no-epoch-checkpoints"])
    check_target_sparsity(f"{save}/checkpoint_last.pt", 0.5)
    exported = str(tmp_path / "exported.pt")
    proc = harness.run(["fairseq-bso-prune", "export", f"{save}/checkpoint_last.pt", exported], check=False)
    assert proc.returncode != 0 and "'my_task_pruned' is not registered" in proc.stdout and "--user-dir" in proc.stdout
    harness.run(["fairseq-bso-prune", "export", f"{save}/checkpoint_last.pt", exported, "--user-dir", MY_TASK_DIR])
    task_cfg = torch.load(exported, map_location="cpu", weights_only=False)["cfg"]["task"]
    assert task_cfg["_name"] == "my_task" and task_cfg["my_option"] == 3 and "prune_ratio" not in task_cfg, task_cfg
    proc = harness.run(["fairseq-generate", word_order_bin, "--user-dir", MY_TASK_DIR, "--path", exported, "--cpu",
                        "--gen-subset", "test", "--beam", "2", "--batch-size", "8", *harness.NO_DROP])
    assert proc.stdout.count("\nH-") == 20, proc.stdout[-2000:]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_equal_one_process_with_update_freq_2(word_order_bin, tmp_path):
    """Two fairseq-train processes (gloo, --ddp-backend legacy_ddp: fairseq's pytorch_ddp passes device_ids to
    DistributedDataParallel, which refuses CPU modules) prune the same weights and train to the weights of one
    process with --update-freq 2 (each update sums the same two batches), within float32 rounding."""
    common = ["--task", "translation_pruned", "--prune-ratio", "0.5", "--prune-schedule", "gradual",
              "--prune-start-update", "0", "--prune-end-update", "4", "--prune-frequency", "2"]
    one = str(tmp_path / "one")
    harness.train(word_order_bin, one, extra=[*common, "--update-freq", "2"], max_epoch=1)
    two = str(tmp_path / "two")
    port = free_port()
    procs = []
    for rank in (0, 1):
        cmd = ["fairseq-train", word_order_bin, "--user-dir", harness.USER_DIR, *harness.TINY_LSTM, *harness.COMMON,
               "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.005", "--batch-size", "16",
               "--max-epoch", "1", "--save-dir", two, "--no-epoch-checkpoints", *common,
               "--distributed-world-size", "2", "--distributed-rank", str(rank), "--distributed-no-spawn",
               "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-backend", "gloo",
               "--ddp-backend", "legacy_ddp"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=harness.env_without_overrides()))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{out[-3000:]}"
    assert "num_updates 7" in outs[0], outs[0][-2000:]
    a = torch.load(f"{one}/checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(f"{two}/checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    assert_same_zeros(zero_sets(f"{one}/checkpoint_last.pt"), zero_sets(f"{two}/checkpoint_last.pt"),
                      "two ranks against one process")
    check_target_sparsity(f"{two}/checkpoint_last.pt", 0.5)
    for name in a:
        scale = float(a[name].abs().max()) or 1.0
        diff = float((a[name] - b[name]).abs().max())
        # 7 Adam updates of lr 0.005 from gradients summed in another order: float32 rounding, amplified by Adam's
        # normalization where a moment is tiny; far below one update's size (lr)
        assert diff <= 1e-3 * 0.005 * 7 + 1e-5 * scale, \
            f"{name}: max |w_one − w_two| = {diff:.3g} (max |w| {scale:.3g})"


def trainer_for(data, argv):
    """fairseq's own Trainer with a task, model and criterion built from a fairseq-train command line."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--user-dir", harness.USER_DIR, *harness.TINY_LSTM,
                                                *harness.COMMON, "--optimizer", "adam", "--lr", "0.005",
                                                "--criterion", "cross_entropy", *argv])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    trainer.lr_step(1)  # builds the optimizer, as fairseq-train does before training
    batches = task.get_batch_iterator(task.dataset("train"), max_sentences=16, required_batch_size_multiple=1,
                                      seed=1).next_epoch_itr(shuffle=False)
    return trainer, task, batches


# The modes fairseq-train runs on a CPU with this fairseq build (tests/test_mixed_precision.py says why).
MODES = {"fp32": [], "fp16": ["--fp16", "--fp16-no-flatten-grads"],
         "memory-efficient-fp16": ["--memory-efficient-fp16"], "amp": ["--amp"]}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_pruned_gradients_are_zero_when_fairseq_clips_them(word_order_bin, mode):
    """Inside fairseq's Trainer: when it calls clip_grad_norm (which also gives the logged gnorm and, under --fp16,
    copies the gradients into the fp32 master copy) every pruned weight's gradient is exactly zero, and the norm
    it returns is the norm of the gradients it was given; after each step no pruned position is non-zero in the
    weights, the fp32 master copy or any optimizer state tensor (pruning at update 1, after Adam's first step)."""
    trainer, task, batches = trainer_for(word_order_bin, ["--task", "translation_pruned", "--prune-ratio", "0.5",
                                                          "--prune-start-update", "1", "--clip-norm", "0.1",
                                                          *MODES[mode]])
    seen = []
    original = trainer.clip_grad_norm

    def clip_grad_norm(clip_norm):
        pruner = task.pruner
        leaked = 0 if pruner.masks is None else sum(int(p.grad[pruner.masks[n] == 0].ne(0).sum())
                                                    for n, p in pruner.weights.items())
        want = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in trainer.model.parameters()
                             if p.grad is not None))
        norm = original(clip_norm)
        seen.append((leaked, want, norm))
        return norm

    trainer.clip_grad_norm = clip_grad_norm
    for i, sample in zip(range(3), batches):
        trainer.train_step([sample])
        leaked, want, norm = seen[-1]
        if i == 0:
            continue  # dense
        assert leaked == 0, f"{mode} update {i}: {leaked} pruned weights have a non-zero gradient at clipping"
        if mode in ("fp32", "amp"):  # the gradients are final here (fp16 modes scale them inside the optimizer)
            assert abs(float(norm) - want) <= 1e-5 * want, f"{mode} update {i}: gnorm {float(norm)!r}, norm of " \
                                                            f"the gradients {want!r}"
        counts = task.pruner.nonzero_pruned(trainer.optimizer)
        assert counts == {"weights": 0, "optimizer": 0}, f"{mode} update {i}: non-zero at pruned positions {counts}"
        assert math.isfinite(float(norm)), f"{mode} update {i}: gnorm {norm}"
    assert task.pruner.pruned_at == 1 and len(seen) == 3  # pruned after Adam's first step made its moments


def test_lean_greedy_is_shared_by_the_pruned_translation_task(word_order_bin):
    """--task translation_pruned --lean-greedy --beam 1 decodes with the lean greedy decoder (a piece every plugin
    translation task shares); without --lean-greedy, fairseq's generator."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    names = []
    for extra in ([], ["--lean-greedy"]):
        args = options.parse_args_and_arch(options.get_generation_parser(), [
            word_order_bin, "--user-dir", harness.USER_DIR, "--cpu", "--task", "translation_pruned", "--beam", "1",
            *extra])
        cfg = convert_namespace_to_omegaconf(args)
        task = tasks.setup_task(cfg.task)
        model = task.build_model(convert_namespace_to_omegaconf(options.parse_args_and_arch(
            options.get_training_parser(), [word_order_bin, "--user-dir", harness.USER_DIR, *harness.TINY_LSTM,
                                            "--task", "translation_pruned"])).model)
        names.append(type(task.build_generator([model], cfg.generation)).__name__)
    assert names == ["SequenceGenerator", "GreedyGenerator"], names
