"""The distillation corpus store behind ``--task seq_kd``: append-only shard logs,
batch-level resume and a deterministic, atomic merge.

Layout under ``--kd-output-dir DIR``::

    DIR/.seq_kd/<subset>.manifest.json          settings the logs were made with
    DIR/.seq_kd/<subset>.shard<r>of<n>.jsonl    one JSON line per sentence, fsync'd per batch
    DIR/.seq_kd/<subset>.shard<r>of<n>.done     written when shard r has every batch
    DIR/<subset>.<src>, DIR/<subset>.<tgt>      the merged corpus, in sample-id order
    DIR/<subset>.score                          (--kd-write-scores) the teacher's score per line

A run killed at any point leaves whole batches in its log plus at most one torn
line, which is dropped on restart; the restarted run skips the batches already
logged (the batches are the same: fairseq's batching is deterministic for the
same data and options) and generates the rest.  When every shard is done the
last one to finish merges the logs by sample id and writes the corpus through
temporary files renamed into place.

Data safety (``fairseq_bso.safe_io``): the corpus files are outputs under the package's one writer rule:
an existing ``DIR/<subset>.<lang>`` that this task did not write (e.g. ``--kd-output-dir`` naming the raw
data folder that holds the gold ``train.src/train.tgt``), or one that is an input, is refused before
anything is generated, naming both paths; ``--kd-output-dir`` naming a file is refused.  The manifest
binds the logs to what they were made from: the data folder and a SHA-256 of the subset's binarized files
and dictionaries, a SHA-256 of the teacher's weights, and every generation option that changes the
output; resuming against anything else is refused naming each difference.  Written files follow the
umask; a failed write (full disk, file size limit) names the file.
"""

import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

from ..fault_points import fault_point
from ..safe_io import (WriteError, check_output_folder, check_outputs, write_json, write_lines,
                       write_outputs)

COMMAND = "fairseq-generate --task seq_kd"
# what the manifest's keys are, for the refusal of a resume against other data, teacher or options
DESCRIPTIONS = {
    "data": "the data folder", "data_files": "the subset's binarized files", "data_sha256":
    "the SHA-256 of the subset's binarized files and dictionaries (other data)", "teacher_sha256":
    "the SHA-256 of the teacher's weights (another checkpoint)", "num_sentences": "the subset's sentence count",
    "batch_ids_digest": "the batches (other batch options or data)",
}

logger = logging.getLogger(__name__)


class SettingsMismatch(ValueError):
    pass


class CorpusStore:
    def __init__(self, out_dir: str, subset: str, src: str, tgt: str, shard_id: int, num_shards: int,
                 write_scores: bool = False):
        if not out_dir:
            raise ValueError("--task seq_kd needs --kd-output-dir DIR (where the distillation corpus goes)")
        check_output_folder(out_dir, "--kd-output-dir")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard {shard_id} of {num_shards}: the shard id must be in [0, {num_shards})")
        self.out_dir, self.subset, self.src, self.tgt = out_dir, subset, src, tgt
        self.shard_id, self.num_shards, self.write_scores = shard_id, num_shards, write_scores
        self.work = os.path.join(out_dir, ".seq_kd")
        self.inputs: List[str] = []
        self.done_ids: set = set()
        self._log = None

    # -- paths ---------------------------------------------------------------------------------------------
    def _shard_path(self, r: int, ext: str) -> str:
        return os.path.join(self.work, f"{self.subset}.shard{r}of{self.num_shards}.{ext}")

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.work, f"{self.subset}.manifest.json")

    def output_paths(self) -> List[str]:
        paths = [os.path.join(self.out_dir, f"{self.subset}.{lang}") for lang in (self.src, self.tgt)]
        if self.write_scores:
            paths.append(os.path.join(self.out_dir, f"{self.subset}.score"))
        return paths

    def check_outputs(self, inputs: Sequence[str]) -> None:
        """The writer rule, before anything is generated: refuse outputs that are inputs or files this task did
        not write; then create the work folder."""
        self.inputs = list(inputs)
        check_outputs(self.output_paths(), self.inputs, COMMAND, force=False, force_option=None,
                      what=f"--kd-output-dir {self.out_dir}")
        self._make_work()

    def _make_work(self) -> None:
        try:
            os.makedirs(self.work, exist_ok=True)
        except OSError as e:
            raise WriteError(e.errno, f"--kd-output-dir {self.out_dir}: cannot create {self.work} ({e.strerror})") from e

    # -- settings ------------------------------------------------------------------------------------------
    def check_settings(self, settings: Dict) -> None:
        """Refuse to resume logs written with other settings (they would mix two corpora)."""
        settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        self._make_work()
        if os.path.exists(self.manifest_path):
            with open(self.manifest_path, encoding="utf-8") as f:
                old = json.load(f)
            if old != settings:
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                named = [f"{k}{' (' + DESCRIPTIONS[k] + ')' if k in DESCRIPTIONS else ''}: {old.get(k)!r} -> "
                         f"{settings.get(k)!r}" for k in diff]
                raise SettingsMismatch(
                    f"{self.manifest_path}: the corpus in {self.work} was generated from other data, teacher or "
                    f"settings ({'; '.join(named)}); rerun with the same data, checkpoint and options, or delete "
                    f"{self.work} (or pick another --kd-output-dir) to start over")
        else:
            write_json(self.manifest_path, settings, sort_keys=True)

    # -- the shard log ---------------------------------------------------------------------------------------
    @staticmethod
    def _read_log(path: str, repair: bool = False) -> List[Dict]:
        """Complete lines of a log; a torn last line (killed mid-write) is dropped (and cut off if ``repair``)."""
        if not os.path.exists(path):
            return []
        with open(path, "rb") as f:
            data = f.read()
        good = data[: data.rfind(b"\n") + 1]
        if repair and len(good) != len(data):
            with open(path, "r+b") as f:
                f.truncate(len(good))
            logger.info(f"seq_kd: dropped a torn last line from {path}")
        return [json.loads(line) for line in good.decode("utf-8").splitlines() if line]

    def open_shard(self) -> None:
        """Load what this shard already logged and open its log for appending."""
        self._make_work()
        records = self._read_log(self._shard_path(self.shard_id, "jsonl"), repair=True)
        self.done_ids = {r["id"] for r in records}
        self._log = open(self._shard_path(self.shard_id, "jsonl"), "a", encoding="utf-8")

    def append_batch(self, records: Iterable[Dict]) -> None:
        """Log one batch's sentences and make them durable before the next batch starts."""
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
        text = "".join(lines)
        fault_point("seq_kd.append_batch", log=self._log, text=text)  # tests: a kill halfway through this write
        try:
            self._log.write(text)
            self._log.flush()
            os.fsync(self._log.fileno())
        except OSError as e:  # a full disk, a file size limit: the torn line is dropped on the next run
            raise WriteError(e.errno, f"{self._log.name}: cannot write ({e.strerror or e}); the batches logged "
                                      f"before are kept: rerun the same command once there is room") from e
        self.done_ids.update(json.loads(line)["id"] for line in lines)

    # -- completion and merge --------------------------------------------------------------------------------
    def finish_shard(self, expected_ids: Sequence[int]) -> bool:
        """Mark this shard done if its log holds every expected id; merge if every shard is done."""
        missing = set(expected_ids) - self.done_ids
        if missing:
            logger.warning(f"seq_kd: shard {self.shard_id} of {self.num_shards} still lacks {len(missing)} "
                           f"sentences; rerun the same command to finish it")
            return False
        if self._log is not None:
            self._log.close()
            self._log = None
        write_lines(self._shard_path(self.shard_id, "done"), [str(len(expected_ids))])
        return self.merge_if_complete()

    def merge_if_complete(self) -> bool:
        waiting = [r for r in range(self.num_shards) if not os.path.exists(self._shard_path(r, "done"))]
        if waiting:
            logger.info(f"seq_kd: shard {self.shard_id} done; waiting for shard(s) {waiting} of {self.num_shards} "
                        f"before the merge")
            return False
        by_id: Dict[int, Dict] = {}
        for r in range(self.num_shards):
            for rec in self._read_log(self._shard_path(r, "jsonl")):
                by_id.setdefault(rec["id"], rec)  # a batch logged twice holds the same hypotheses
        ids = sorted(by_id)
        records = [by_id[i] for i in ids]
        paths = self.output_paths()
        files = {paths[0]: [r["src"] for r in records], paths[1]: [r["hyp"] for r in records]}
        if self.write_scores:
            files[paths[2]] = [f"{r['score']:.6f}" for r in records]
        write_outputs(files, COMMAND, inputs=self.inputs, what=f"--kd-output-dir {self.out_dir}")
        logger.info(f"seq_kd: wrote {len(records)} lines to {', '.join(paths)}")
        self._warn_missing(ids)
        return True

    def _warn_missing(self, ids: Sequence[int]) -> None:
        """Compare the merged ids with the subset's sentences (the manifest's count) and name why any is missing."""
        settings = {}
        if os.path.exists(self.manifest_path):
            with open(self.manifest_path, encoding="utf-8") as f:
                settings = json.load(f)
        num = settings.get("num_sentences")
        if num is None:  # no manifest: only gaps below the highest id can be seen
            num = ids[-1] + 1 if ids else 0
        missing = sorted(set(range(num)) - set(ids))
        if not missing:
            return
        too_long = set(settings.get("too_long_ids", []))
        not_batched = set(settings.get("not_batched_ids", []))
        causes = []
        for group, why in (
                ([i for i in missing if i in too_long],
                 "longer than the model accepts (--max-source-positions/--max-target-positions), left out by "
                 "--skip-invalid-size-inputs-valid-test"),
                ([i for i in missing if i in not_batched],
                 "in no batch fairseq made, although they fit the model"),
                ([i for i in missing if i not in too_long and i not in not_batched],
                 "in no shard log although they were batched (logs changed after the shards finished?)")):
            if group:
                causes.append(f"{len(group)} {why}: ids {group[:10]}{' ...' if len(group) > 10 else ''}")
        logger.warning(f"seq_kd: {len(missing)} of the {num} sentences of {self.subset} are not in the corpus (so its "
                       f"lines no longer line up with the subset's): " + "; ".join(causes))


def is_complete(out_dir: str, subset: str, num_shards: int) -> Optional[bool]:
    """For tests and scripts: every shard's done marker exists."""
    work = os.path.join(out_dir, ".seq_kd")
    return all(os.path.exists(os.path.join(work, f"{subset}.shard{r}of{num_shards}.done"))
               for r in range(num_shards))
