"""Every sentence is in a batch with fairseq's default batch options.

fairseq-fixed 0.12.3's ``data_utils.batch_by_size`` drops the last batch when its size is not a multiple of
``--required-batch-size-multiple`` (default 8), and its batcher ends a dataset with such a remainder batch: the
last few sentences of every training epoch, every validation and every ``fairseq-generate`` run are lost.  The
plugin's tasks keep that batch (``fairseq_bso/fairseq_fixes/batching.py``); stock ``--task translation`` shows the loss.
The seq_kd side (``fairseq-generate --task seq_kd``) is in tests/test_seq_kd.py.
"""

import numpy as np
import pytest

import harness

N = {"train": 203, "valid": 20}
BATCH_OPTIONS = {"batch-size 64": ["--batch-size", "64"], "max-tokens 100": ["--max-tokens", "100"]}


def iterator_ids(data, task_name, subset, batch_options, epoch=1):
    """The sentence ids fairseq-train's trainer iterates over in one epoch of ``subset``, in order."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        data, "--user-dir", harness.USER_DIR, "--task", task_name, *harness.TINY_LSTM, "--cpu", "--seed", "1",
        "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.005", *batch_options])
    cfg = convert_namespace_to_omegaconf(args)
    assert cfg.dataset.required_batch_size_multiple == 8  # fairseq's default, left alone
    task = tasks.setup_task(cfg.task)
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    if subset == "train":
        iterator = trainer.get_train_iterator(epoch=epoch)
    else:
        task.load_dataset(subset)
        iterator = trainer.get_valid_iterator(subset)
    return [i for sample in iterator.next_epoch_itr(shuffle=subset == "train") for i in sample["id"].tolist()]


@pytest.mark.parametrize("options", BATCH_OPTIONS.values(), ids=BATCH_OPTIONS.keys())
@pytest.mark.parametrize("subset", ["train", "valid"])
@pytest.mark.parametrize("task_name", ["constrained_beam_training", "translation_pruned"])
def test_plugin_tasks_iterate_over_every_sentence(uneven_bin, subset, options, task_name):
    ids = iterator_ids(uneven_bin, task_name, subset, options)
    missing = sorted(set(range(N[subset])) - set(ids))
    assert not missing and len(ids) == N[subset], (
        f"{task_name}: {len(ids)} of {N[subset]} {subset} sentences in the epoch; missing ids {missing}")
    if subset == "train":  # a resumed epoch >= 2 (the task rebuilds epoch 1's batches): the same sentences
        assert sorted(iterator_ids(uneven_bin, task_name, subset, options, epoch=2)) == sorted(ids)


@pytest.mark.parametrize("task_name", ["constrained_beam_training", "translation_pruned", "seq_kd"])
def test_a_resumed_epoch_builds_the_batches_of_epoch_1(uneven_bin, task_name, tmp_path):
    """SameBatchesOnResume, shared by the plugin's tasks: the iterator of a run resumed in epoch 3 holds the
    batches of epoch 1 (as the uninterrupted run's reused iterator does) and starts in epoch 3.  (seq_kd only
    generates, in epoch 1, where the mixin changes nothing; this checks that its own get_batch_iterator, which
    reorganizes fairseq's batches into shards, composes with the mixin.)"""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY

    def batches(epoch):
        extra = {"kd_output_dir": str(tmp_path / f"kd{epoch}")} if task_name == "seq_kd" else {}
        cfg = TASK_DATACLASS_REGISTRY[task_name](data=uneven_bin, source_lang="src", target_lang="tgt",
                                                 dataset_impl=None, required_seq_len_multiple=1, train_subset="train",
                                                 **extra)
        task = TASK_REGISTRY[task_name].setup_task(cfg)
        task.load_dataset("train")
        iterator = task.get_batch_iterator(dataset=task.dataset("train"), max_sentences=8, seed=1, epoch=epoch,
                                           required_batch_size_multiple=1)
        return [sorted(int(i) for i in b) for b in iterator.frozen_batches], iterator.epoch

    first, third = batches(1), batches(3)
    assert third == (first[0], 3), f"{task_name}: epoch 3's iterator differs from epoch 1's"


def test_every_plugin_task_shares_the_batching_fixes_and_lean_greedy():
    """Every task the plugin registers (its own and the pruned twins) has both batching fixes, and every one of
    them that generates translations has --lean-greedy (language modeling has no source to decode from)."""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY
    from fairseq.tasks.translation import TranslationTask

    import fairseq_bso  # noqa: F401  (registers the plugin's tasks)
    from fairseq_bso.distill.lean_greedy_task import LeanGreedy, LeanGreedyConfig
    from fairseq_bso.fairseq_fixes.batching import PluginBatching

    plugin = {name: cls for name, cls in TASK_REGISTRY.items() if cls.__module__.startswith("fairseq_bso")}
    expected = {"constrained_beam_training", "seq_kd", "translation_pruned", "language_modeling_pruned"}
    assert expected <= set(plugin), f"plugin tasks registered: {sorted(plugin)}"
    missing = []
    for name, cls in sorted(plugin.items()):
        if not issubclass(cls, PluginBatching):
            missing.append(f"{name}: no PluginBatching in {[c.__name__ for c in cls.__mro__]}")
        if issubclass(cls, TranslationTask) and not (
                issubclass(cls, LeanGreedy) and issubclass(TASK_DATACLASS_REGISTRY[name], LeanGreedyConfig)):
            missing.append(f"{name}: a translation task without LeanGreedy and its --lean-greedy option")
    assert not missing, "; ".join(missing)


@pytest.mark.parametrize("subset", ["train", "valid"])
def test_stock_translation_loses_the_last_partial_batch(uneven_bin, subset):
    """The trap itself (docs/bad_inputs.md): the data above is data the fix is needed for."""
    ids = iterator_ids(uneven_bin, "translation", subset, BATCH_OPTIONS["batch-size 64"])
    lost = N[subset] - len(set(ids))
    assert 1 <= lost < 8, f"stock translation iterated over {len(set(ids))} of {N[subset]} {subset} sentences"


def test_left_out_sentences_become_one_more_batch_in_fairseqs_order():
    from fairseq_bso.fairseq_fixes.batching import with_left_out

    indices = np.array([5, 3, 9, 0, 7, 1], dtype=np.int64)
    batches = with_left_out([np.array([5, 3]), np.array([9, 0])], indices)
    assert [b.tolist() for b in batches] == [[5, 3], [9, 0], [7, 1]]
    assert [b.tolist() for b in with_left_out(batches, indices)] == [[5, 3], [9, 0], [7, 1]]  # nothing to add


def test_batches_rebuilt_every_epoch_keep_every_sentence_too(uneven_bin):
    """With rebuild_batches fairseq makes each epoch's batches later, outside get_batch_iterator."""
    from fairseq_bso.constraints.task import ConstrainedBeamTrainingConfig, ConstrainedBeamTrainingTask

    cfg = ConstrainedBeamTrainingConfig(data=uneven_bin, source_lang="src", target_lang="tgt", dataset_impl=None,
                                        required_seq_len_multiple=1, train_subset="train")
    cfg.rebuild_batches = True
    task = ConstrainedBeamTrainingTask.setup_task(cfg)
    task.load_dataset("train")
    iterator = task.get_batch_iterator(dataset=task.dataset("train"), max_sentences=64, seed=1,
                                       required_batch_size_multiple=8)
    assert callable(iterator.batch_sampler)
    for epoch in (1, 2):
        ids = [i for sample in iterator.next_epoch_itr(shuffle=True) for i in sample["id"].tolist()]
        assert sorted(ids) == list(range(203)), f"epoch {epoch}: {len(set(ids))} of 203 sentences"
