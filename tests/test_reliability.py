"""Reliability (issue 8), through real fairseq-train / fairseq-generate subprocesses with --user-dir:

- kill and resume: ``bso`` mid-curriculum, ``word_kd`` and pruned retraining SIGKILLed at an arbitrary update
  (and in the middle of writing ``checkpoint_last.pt``), restarted with the same command, continue exactly as
  the run that was never killed: same K per epoch, same pruning masks, bit-identical weights;
- distributed: 2 CPU workers (gloo) give bit-identical weights to 1 process with ``--update-freq 2``;
- determinism: the same seed and data give the same BSO loss curve and the same distillation corpus twice;
- the non-finite loss guard, and the bad inputs of docs/bad_inputs.md that no other test file covers.

seq_kd corpus generation is covered in tests/test_seq_kd.py (SIGKILL and resume, 2 shards merged).

Every subprocess runs with one intra-op thread (OMP_NUM_THREADS=1): the models are tiny and the 2 cores are
shared, where torch's default thread pool spins and makes a 1-second run take a minute.
"""

import json
import os
import re
import signal
import socket
import subprocess
from typing import Dict, List, Sequence

import pytest
import torch

import faults
import harness

UPDATES_PER_EPOCH = 13  # 200 training sentences, --batch-size 8 --update-freq 2 (or 2 workers): 25 batches
KILL_AFTER = 18  # an update in epoch 2: the kill lands somewhere after it, typically mid-epoch
BSO = ["--criterion", "bso", "--bso-beam-size", "4", "--bso-curriculum-start", "2", "--bso-curriculum-epochs", "1"]
PRUNE = ["--criterion", "cross_entropy", "--prune-ratio", "0.6", "--prune-schedule", "gradual",
         "--prune-start-update", "0", "--prune-end-update", "30", "--prune-frequency", "4"]
EPOCHS = {"bso": 3, "word_kd": 2, "pruning": 3}
# fairseq's recipe for one process per rank; on CPU it does not spawn workers itself (it spawns one per GPU), and
# its default DDP wrapper (pytorch_ddp) is built for one GPU per process: legacy_ddp reduces gradients itself
DISTRIBUTED = ["--distributed-world-size", "2", "--distributed-backend", "gloo", "--distributed-no-spawn"]


def env(**extra) -> Dict[str, str]:
    e = harness.env_without_overrides()
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return e


def run(cmd: Sequence[str], check: bool = True, **extra_env) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(**extra_env),
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc


def train_cmd(data: str, save: str, *extra: str) -> List[str]:
    """harness.train's command (``extra`` comes last and wins)."""
    return ["fairseq-train", data, "--user-dir", harness.USER_DIR, *harness.TINY_LSTM, *harness.COMMON,
            "--optimizer", "adam", "--lr", "0.005", "--batch-size", "16", "--max-epoch", "1", "--save-dir", save,
            "--no-epoch-checkpoints", *extra]


def command(name: str, data: str, save: str, nll_checkpoint: str, update_freq: int = 2) -> List[str]:
    """The fairseq-train command of a configuration: json logs of every update, a checkpoint every 5 updates."""
    criterion = {
        "bso": [*BSO, "--finetune-from-model", nll_checkpoint],
        "word_kd": ["--criterion", "word_kd", "--kd-teacher-path", nll_checkpoint, "--kd-alpha", "0.5"],
        "pruning": [*PRUNE, "--finetune-from-model", nll_checkpoint],
    }[name]
    return ["fairseq-train", data, "--user-dir", harness.USER_DIR, *harness.TINY_LSTM, "--cpu", "--seed", "1",
            "--num-workers", "0", "--no-progress-bar", *harness.NO_DROP, "--log-format", "json", "--log-interval", "1",
            "--task", "constrained_beam_training", *criterion, "--optimizer", "adam", "--lr", "0.005",
            "--batch-size", "8", "--update-freq", str(update_freq), "--max-epoch", str(EPOCHS[name]),
            "--save-dir", save, "--no-epoch-checkpoints", "--save-interval-updates", "5",
            "--keep-interval-updates", "1"]


def run_until_killed(cmd: Sequence[str], after_update: int) -> str:
    """Run ``cmd`` and SIGKILL it as soon as it logs update ``after_update`` (wherever it is by then)."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            m = re.search(r'\| train_inner \| .*"num_updates": "(\d+)"', line)
            if m and int(m.group(1)) >= after_update:
                os.kill(proc.pid, signal.SIGKILL)
                break
        out.append(proc.stdout.read())
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(out)[-3000:]
    return "".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_workers(cmd: Sequence[str], ddp_backend: str = "legacy_ddp", check: bool = True) -> List[str]:
    """``cmd`` as ranks 0 and 1 of one fairseq distributed job on this machine (gloo over TCP)."""
    init = ["--distributed-init-method", f"tcp://127.0.0.1:{free_port()}", "--ddp-backend", ddp_backend]
    procs = [subprocess.Popen([*cmd, *DISTRIBUTED, *init, "--distributed-rank", str(rank)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env()) for rank in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 or not check, f"rank {rank} exited {p.returncode}:\n{out[-4000:]}"
    return outs


def updates(log: str) -> Dict[int, str]:
    """{update: loss} from the json train_inner lines (the loss as logged, 3 decimals)."""
    out = {}
    for line in log.splitlines():
        if "| train_inner |" in line:
            stats = json.loads(line.split("| train_inner | ", 1)[1])
            out[int(stats["num_updates"])] = stats["loss"]
    return out


def epochs(log: str) -> Dict[int, dict]:
    """{epoch: stats} from the json per-epoch train lines."""
    out = {}
    for line in log.splitlines():
        if "| train | {" in line:
            stats = json.loads(line.split("| train | ", 1)[1])
            out[int(stats["epoch"])] = stats
    return out


def weights(save: str) -> Dict[str, torch.Tensor]:
    return torch.load(os.path.join(save, "checkpoint_last.pt"), map_location="cpu", weights_only=False)["model"]


def assert_same_weights(save_a: str, save_b: str) -> None:
    a, b = weights(save_a), weights(save_b)
    assert list(a) == list(b)
    differ = [n for n in a if not torch.equal(a[n], b[n])]
    assert not differ, (f"{len(differ)} tensors differ, e.g. {differ[0]}: "
                        f"max |Δ| = {(a[differ[0]] - b[differ[0]]).abs().max()}")


def zero_sets(save: str) -> Dict[str, torch.Tensor]:
    return {n: t.eq(0) for n, t in weights(save).items() if t.dim() >= 2}


@pytest.fixture(scope="module")
def reference(word_order_bin, nll_checkpoint, tmp_path_factory):
    """One uninterrupted single-process run per configuration, made when a test first asks for it."""
    cache = {}

    def get(name: str):
        if name not in cache:
            save = str(tmp_path_factory.mktemp(f"reference_{name}"))
            cache[name] = save, run(command(name, word_order_bin, save, nll_checkpoint)).stdout
        return cache[name]

    return get


# -- 1. kill and resume -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bso", "word_kd", "pruning"])
def test_sigkill_then_same_command_continues_as_if_never_killed(name, reference, word_order_bin, nll_checkpoint,
                                                                tmp_path):
    """SIGKILL once the run has logged update 18 (epoch 2 of the BSO curriculum 2 -> 3 -> 4), then the same
    command: it resumes from the last checkpoint (every 5 updates, so usually mid-epoch) and ends bit-identical to
    the uninterrupted run.  (--task constrained_beam_training: the plugin's task gives a resumed run the batches
    of the uninterrupted run, see test_a_resumed_epoch_has_the_batches_of_the_uninterrupted_run.)"""
    ref_save, ref_log = reference(name)
    save = str(tmp_path / "killed")
    cmd = command(name, word_order_bin, save, nll_checkpoint)
    run_until_killed(cmd, KILL_AFTER)
    resumed = run(cmd).stdout  # the very same command

    loaded = re.search(r"Loaded checkpoint \S+ \(epoch (\d+) @ (\d+) updates\)", resumed)
    assert loaded, resumed[-3000:]
    epoch, at = int(loaded.group(1)), int(loaded.group(2))
    assert 1 <= at < EPOCHS[name] * UPDATES_PER_EPOCH
    ref_updates, new_updates = updates(ref_log), updates(resumed)
    assert sorted(new_updates) == list(range(at + 1, EPOCHS[name] * UPDATES_PER_EPOCH + 1))
    assert new_updates == {u: ref_updates[u] for u in new_updates}  # the same loss at every update after the resume
    assert max(epochs(resumed)) == EPOCHS[name]
    assert_same_weights(save, ref_save)  # bit-identical weights at the end

    if name == "bso":  # the epoch's K, in the epoch the run resumed in and after
        from fairseq_bso.bso.criterion import curriculum_beam_size
        beams = {e: float(s["train_bso_beam"]) for e, s in epochs(resumed).items()}
        assert min(beams) == epoch and beams == {e: float(curriculum_beam_size(e, 2, 1, 4)) for e in beams}
        assert {e: float(s["train_bso_beam"]) for e, s in epochs(ref_log).items()} == {1: 2, 2: 3, 3: 4}
    if name == "pruning":  # the same masks: the same exact zeros, growing on the same schedule
        if at % 4 != 0 and at < 30:  # resumed between two pruning steps: the masks come from the zeros
            assert f"masks re-derived from the exact zeros of the weights at update {at} (resume)" in resumed
        ours, theirs = zero_sets(save), zero_sets(ref_save)
        assert all(torch.equal(ours[n], theirs[n]) for n in ours)
        zeros, total = sum(int(z.sum()) for z in ours.values()), sum(z.numel() for z in ours.values())
        assert 0.55 < zeros / total < 0.65  # 60% of the weight matrices (biases are never pruned)


def test_sigkill_while_copying_checkpoint_last_keeps_the_previous_one(word_order_bin, tmp_path):
    """fairseq writes checkpoint_last.pt as a copy of the epoch checkpoint; a kill halfway through the copy
    (test-only fault injection) leaves the previous, complete checkpoint_last.pt, and the restart resumes."""
    save = str(tmp_path / "ckpt")
    # no validation, so no checkpoint_best.pt: checkpoint<epoch>.pt is written, then copied to checkpoint_last.pt
    cmd = train_cmd(word_order_bin, save, "--task", "constrained_beam_training", "--max-epoch", "2",
                    "--disable-validation")
    cmd.remove("--no-epoch-checkpoints")
    killed = run(faults.command(cmd), check=False, FAIRSEQ_BSO_KILL_IN_COPY="2")  # the copy of epoch 2
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:]
    assert os.path.getsize(f"{save}/checkpoint_last.pt.tmp") < os.path.getsize(f"{save}/checkpoint2.pt")
    assert torch.load(f"{save}/checkpoint_last.pt", weights_only=False)["optimizer_history"][-1]["num_updates"] == 13
    resumed = run(cmd).stdout
    assert "Loaded checkpoint" in resumed and "(epoch 2 @ 13 updates)" in resumed
    assert re.search(r"\| train \| epoch 002 \|.*\| num_updates 26 \|", resumed)


def test_a_resumed_epoch_has_the_batches_of_the_uninterrupted_run(word_order_bin):
    """fairseq-fixed 0.12.3.1 builds batches with the numpy seed ``seed + epoch`` of the epoch its reused iterator
    is created in: epoch 1 in an uninterrupted run, the resume epoch after a restart.  The plugin's task builds
    those of epoch 1 whatever the epoch; stock translation shows the difference it corrects."""
    from fairseq.tasks.translation import TranslationTask
    from fairseq_bso.constraints.task import ConstrainedBeamTrainingConfig, ConstrainedBeamTrainingTask

    def batches(task_class, epoch):
        cfg = ConstrainedBeamTrainingConfig(data=word_order_bin, source_lang="src", target_lang="tgt",
                                            dataset_impl=None, required_seq_len_multiple=1, train_subset="train")
        task = task_class.setup_task(cfg)
        task.load_dataset("train")
        iterator = task.get_batch_iterator(dataset=task.dataset("train"), max_sentences=8, seed=1, epoch=epoch,
                                           required_batch_size_multiple=1)
        return [sorted(b.tolist()) for b in iterator.frozen_batches], iterator.epoch

    assert batches(ConstrainedBeamTrainingTask, 2) == (batches(ConstrainedBeamTrainingTask, 1)[0], 2)
    assert batches(TranslationTask, 2)[0] != batches(TranslationTask, 1)[0]  # fairseq's own: other batches


# -- 2. distributed -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bso", "word_kd", "pruning"])
def test_two_cpu_workers_equal_one_process_with_update_freq_2(name, reference, word_order_bin, nll_checkpoint,
                                                              tmp_path):
    """2 workers × batches of 8 make the same updates as 1 process × 2 batches of 8 accumulated: the batches of
    an update are the same (fairseq deals batch 2i to rank 0 and 2i+1 to rank 1, --update-freq 2 groups batches
    2i and 2i+1), so the gradient is the same sum g(2i) + g(2i+1) of two fp32 numbers (exact in either order),
    scaled by 2/2 (legacy_ddp averages, the trainer multiplies by the world size: powers of 2, exact).  Hence the
    tolerance is zero: the weights must be bit-identical."""
    ref_save, ref_log = reference(name)
    save = str(tmp_path / "dist")
    rank0, _ = run_two_workers(command(name, word_order_bin, save, nll_checkpoint, update_freq=1))
    assert "distributed init (rank 0)" in rank0 and "training on 2 devices" in rank0
    assert updates(rank0) == updates(ref_log)
    assert_same_weights(save, ref_save)
    if name == "bso":
        assert {e: float(s["train_bso_beam"]) for e, s in epochs(rank0).items()} == {1: 2, 2: 3, 3: 4}


# -- 4. determinism -----------------------------------------------------------------------------------------------

def test_bso_loss_curve_is_the_same_twice(reference, word_order_bin, nll_checkpoint, tmp_path):
    ref_save, ref_log = reference("bso")
    save = str(tmp_path / "again")
    again = run(command("bso", word_order_bin, save, nll_checkpoint)).stdout
    assert len(updates(again)) == EPOCHS["bso"] * UPDATES_PER_EPOCH
    assert updates(again) == updates(ref_log)
    assert_same_weights(save, ref_save)


def test_distillation_corpus_is_the_same_twice(word_order_bin, nll_checkpoint, tmp_path):
    corpora = []
    for attempt in ("first", "second"):
        out_dir = str(tmp_path / attempt)
        run(["fairseq-generate", word_order_bin, "--user-dir", harness.USER_DIR, "--path", nll_checkpoint, "--cpu",
             "--gen-subset", "train", "--beam", "3", "--batch-size", "8", *harness.NO_DROP, "--task", "seq_kd",
             "--kd-output-dir", out_dir, "--kd-write-scores"])
        corpora.append({f: open(os.path.join(out_dir, f), "rb").read()
                        for f in ("train.src", "train.tgt", "train.score")})
    assert corpora[0] == corpora[1]
    assert corpora[0]["train.tgt"].count(b"\n") == 200


# -- non-finite losses --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def in_process(word_order_bin, nll_checkpoint):
    task, model, _, sample = harness.task_and_valid_batch(nll_checkpoint, word_order_bin)
    return task, model, sample, nll_checkpoint


@pytest.mark.parametrize("criterion", ["bso", "word_kd"])
def test_nonfinite_loss_is_skipped_with_zero_gradient_and_counted(in_process, criterion, monkeypatch):
    from fairseq.logging import metrics
    from fairseq_bso.bso import criterion as bso
    from fairseq_bso.distill import word_kd
    from fairseq_bso.fairseq_fixes import nonfinite

    task, model, sample, teacher = in_process
    if criterion == "bso":
        crit = bso.BSOCriterion(task, bso_beam_size=3, bso_curriculum_start=2)
    else:
        crit = word_kd.WordKDCriterion(task, kd_teacher_path=teacher, kd_alpha=0.5)
    model.train()
    loss, sample_size, log = crit(model, sample)
    assert torch.isfinite(loss) and loss.item() > 0 and sample_size > 0 and nonfinite.KEY not in log

    if criterion == "bso":  # the loss of this batch comes out NaN
        real = bso.bso_loss
        monkeypatch.setattr(bso, "bso_loss", lambda *a: real(*a) * float("nan"))
    else:  # a teacher that says inf somewhere
        monkeypatch.setattr(word_kd, "teacher_distribution", lambda logits, k: torch.full_like(logits, float("inf")))
    model.zero_grad()
    loss, sample_size, log = crit(model, sample)
    assert loss.item() == 0.0 and sample_size == 0 and log[nonfinite.KEY] == 1 and log["ntokens"] == 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)  # every parameter, exactly 0

    with metrics.aggregate() as agg:
        type(crit).reduce_metrics([log, log, {"loss": torch.tensor(2.0), "sample_size": 4, "nsentences": 4,
                                              "ntokens": 20, "nll_loss": torch.tensor(1.0)}])
    assert agg.get_smoothed_values()[nonfinite.KEY] == 2

    model.eval()  # validation is not guarded: the non-finite loss is reported as it is
    loss, _, log = crit(model, sample)
    assert not torch.isfinite(loss) and nonfinite.KEY not in log


def test_word_kd_with_a_nan_teacher_skips_every_batch_and_leaves_the_student(word_order_bin, nll_checkpoint,
                                                                            tmp_path):
    """End to end: a teacher checkpoint whose output weights are finite but so large (±3e38) that its logits
    overflow to ±inf makes every training loss NaN (a teacher with NaN weights is refused when loaded, naming
    the parameter: tests/test_data_safety.py); without the guard fairseq stops with "FloatingPointError:
    gradients are Nan/Inf"; with it, training completes, every batch is counted as skipped, and the student
    (Adam, zero gradients from the start) does not move at all."""
    state = torch.load(nll_checkpoint, weights_only=False)
    state["model"]["decoder.fc_out.weight"][0] = 3e38
    state["model"]["decoder.fc_out.weight"][1] = -3e38
    teacher = str(tmp_path / "nan_teacher.pt")
    torch.save(state, teacher)
    save = str(tmp_path / "student")
    out = run(train_cmd(word_order_bin, save, "--criterion", "word_kd", "--kd-teacher-path", teacher,
                        "--finetune-from-model", nll_checkpoint)).stdout
    assert "non-finite training loss (nan) on a batch of 16 sentences" in out and "batch skipped" in out
    assert re.search(r"\| train \| epoch 001 \|.*\| nonfinite_skipped 13 \|.*\| num_updates 13 \|", out)
    assert "valid on 'valid' subset | loss nan" in out  # validation reports it
    student = weights(save)
    initial = torch.load(nll_checkpoint, weights_only=False)["model"]
    assert all(torch.equal(student[n], initial[n]) for n in initial)


# -- 3. bad inputs (docs/bad_inputs.md) not covered by the other test files ---------------------------------------

def test_file_that_is_not_a_checkpoint_is_named_in_generate(word_order_bin, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint\n" * 4)
    proc = run(["fairseq-generate", word_order_bin, "--user-dir", harness.USER_DIR, "--path", str(bad), "--cpu",
                "--beam", "2"], check=False)
    assert proc.returncode != 0
    assert proc.stdout.strip().splitlines()[-1] == (
        f"fairseq_bso.fairseq_fixes.checkpoint_files.UnreadableCheckpoint: cannot read checkpoint {bad} (68 bytes): the file is "
        f"truncated or not a fairseq checkpoint (UnpicklingError: Unsupported operand 110)")
    assert "weights_only" not in proc.stdout  # torch's advice to switch safe loading off is not shown


def test_truncated_checkpoint_last_stops_the_resume_with_its_name(word_order_bin, nll_checkpoint, tmp_path):
    """What a kill during fairseq's own (non-atomic) copy to checkpoint_last.pt used to leave."""
    save = tmp_path / "ckpt"
    save.mkdir()
    (save / "checkpoint_last.pt").write_bytes(open(nll_checkpoint, "rb").read()[:5000])
    proc = run(train_cmd(word_order_bin, str(save)), check=False)
    assert proc.returncode != 0 and "num_updates" not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == (
        f"fairseq_bso.fairseq_fixes.checkpoint_files.UnreadableCheckpoint: cannot read checkpoint {save}/checkpoint_last.pt "
        f"(5,000 bytes): the file is truncated or not a fairseq checkpoint (OSError above)")


def test_plugin_checkpoint_without_user_dir(reference, word_order_bin):
    """No plugin code runs without --user-dir, so these messages are fairseq's and torch's own (documented)."""
    save, _ = reference("bso")
    # resuming a plugin run without --user-dir: argparse does not know the plugin's criterion
    cmd = command("bso", word_order_bin, save, "unused.pt")
    proc = run([c for c in cmd if c not in ("--user-dir", harness.USER_DIR)], check=False)
    assert proc.returncode == 2 and "fairseq-train: error: argument --task: invalid choice: " \
                                   "'constrained_beam_training'" in proc.stdout
    # loading it in Python without importing fairseq_bso (torch's weights_only switched off, else torch refuses
    # argparse.Namespace first, see test_checkpoint_loading.py)
    proc = run(["python3", "-c", "from fairseq import checkpoint_utils as c; "
                f"c.load_model_ensemble_and_task([{os.path.join(save, 'checkpoint_last.pt')!r}])"], check=False,
               PYTHONPATH="", TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    assert proc.returncode == 1
    assert "AssertionError: Could not infer task type from {'_name': 'constrained_beam_training'" in proc.stdout


def test_distributed_on_cpu_without_one_process_per_rank(word_order_bin, tmp_path):
    """fairseq spawns one worker per GPU: on CPU, --distributed-world-size 2 alone stops."""
    proc = run(train_cmd(word_order_bin, str(tmp_path), "--distributed-world-size", "2", "--distributed-backend",
                         "gloo"), check=False)
    assert proc.returncode != 0
    assert proc.stdout.strip().splitlines()[-1] == "AssertionError: world size is 2 but have 0 available devices"


def test_distributed_on_cpu_with_pytorch_ddp(word_order_bin, tmp_path):
    """fairseq's default --ddp-backend pytorch_ddp passes device_ids=[0], which torch refuses for a CPU model."""
    rank0, rank1 = run_two_workers(train_cmd(word_order_bin, str(tmp_path)), ddp_backend="pytorch_ddp", check=False)
    assert ("ValueError: DistributedDataParallel device_ids and output_device arguments only work with "
            "single-device/multiple-device GPU modules or CPU modules, but got device_ids [0], output_device 0, and "
            "module parameters {device(type='cpu')}.") in rank0
    assert "num_updates" not in rank0 + rank1


def test_missing_teacher_checkpoint(word_order_bin, tmp_path):
    proc = run(train_cmd(word_order_bin, str(tmp_path), "--criterion", "word_kd", "--kd-teacher-path",
                         str(tmp_path / "nope.pt")), check=False)
    assert proc.returncode != 0
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"ValueError: --kd-teacher-path {tmp_path}/nope.pt: no such checkpoint"


def test_teacher_whose_data_directory_is_gone_uses_the_students_dictionaries(word_order_bin, nll_checkpoint,
                                                                            tmp_path):
    """fairseq reads a model's dictionaries from the data directory recorded in its checkpoint (often relative to
    where it was trained); word_kd falls back to the student's, with a warning, instead of stopping."""
    state = torch.load(nll_checkpoint, weights_only=False)
    state["cfg"]["task"]["data"] = "data/moved/bin"
    teacher = str(tmp_path / "teacher.pt")
    torch.save(state, teacher)
    out = run(train_cmd(word_order_bin, str(tmp_path / "student"), "--criterion", "word_kd", "--kd-teacher-path",
                        teacher)).stdout
    assert (f"WARNING | fairseq_bso.distill.word_kd | --kd-teacher-path {teacher}: cannot read the teacher's "
            f"dictionaries from the data directory it was trained on ([Errno 2] No such file or directory: "
            f"'data/moved/bin'); using the student's ({word_order_bin}), which it must share") in out
    assert re.search(r"\| train \| epoch 001 \|.*\| kd_loss [\d.]+ \|", out)


def test_binarized_data_empty_or_with_mismatched_sides(tmp_path):
    """fairseq-preprocess checks neither (fairseq-bso-prep does, see test_prep.py): fairseq-train stops."""
    folder = str(tmp_path)
    harness.make_word_order_data(folder, n_train=30, n_valid=5, n_test=5)
    lines = open(f"{folder}/train.tgt").read().splitlines()
    open(f"{folder}/train.tgt", "w").write("\n".join(lines[:-3]) + "\n")  # 30 sources, 27 targets
    for side in ("src", "tgt"):
        open(f"{folder}/test.{side}", "w").close()  # an empty split
    data = harness.preprocess(folder)
    task = ["--task", "constrained_beam_training"]
    proc = run(train_cmd(data, str(tmp_path / "a"), *task), check=False)
    assert proc.returncode != 0
    assert "AssertionError: Source and target must contain the same number of examples" in proc.stdout
    proc = run(train_cmd(data, str(tmp_path / "b"), *task, "--train-subset", "test"), check=False)
    assert proc.returncode != 0 and "ValueError: cannot mmap an empty file" in proc.stdout
