"""``fairseq-bso-prune``: sparsity statistics and export of pruned fairseq checkpoints.

    fairseq-bso-prune stats CKPT [--classes KINDS]
    fairseq-bso-prune export CKPT OUT [--sparse OUT.sparse]
    fairseq-bso-prune densify OUT.sparse OUT

``export`` writes a checkpoint that stock ``fairseq-generate`` loads without the
plugin: parameter names unchanged, the plugin's task replaced by the fairseq task it
extends (``translation`` for ``constrained_beam_training``, ``seq_kd`` and
``translation_pruned``, ``language_modeling`` for ``language_modeling_pruned``, a
user's task for its pruned twin; its extra options dropped), a plugin criterion by ``cross_entropy``, no
``--user-dir``, no optimizer state.  ``--sparse`` also writes a compact copy for
shipping (each pruned matrix as a bit mask plus its non-zero values); ``densify``
turns it back into the exported checkpoint, bit for bit in the weights.
"""

import argparse
import copy
import os
import sys
from collections import OrderedDict

import numpy as np
import torch

from .masks import KINDS, format_table, parse_kinds, prunable, sparsity_table
from .tasks import stock_task, stock_task_fields



def exported_task(name):
    """The task an exported checkpoint names: the plugin's task's stock base (``tasks.stock_task``), with an
    error naming the task when it is not registered (a user's own task: pass its ``--user-dir``)."""
    base = stock_task(name) if name else name
    if name and base is None:
        raise SystemExit(f"fairseq-bso-prune export: the checkpoint's task {name!r} is not registered; if it is "
                         f"your own task, pass the --user-dir that registers it")
    return base
PLUGIN_CRITERIONS = ("bso", "word_kd")
SPARSE_FORMAT = "fairseq-bso-sparse-v1"


def load(path: str) -> dict:
    """A raw checkpoint (weights_only, with the plugin's allow-list), with errors naming the file."""
    import fairseq_bso  # noqa: F401  (allow-lists the types fairseq checkpoints hold)

    if not os.path.isfile(path):
        raise SystemExit(f"fairseq-bso-prune: {path}: no such file")
    from ..fairseq_fixes.checkpoint_files import describe_load_error, describe_nonfinite, nonfinite_parameters

    try:
        state = torch.load(path, map_location="cpu")
    except Exception as e:  # truncated, not a checkpoint, or a global safe loading blocks (named, no unsafe advice)
        raise SystemExit(f"fairseq-bso-prune: {describe_load_error(path, e)}")
    if not isinstance(state, dict) or "model" not in state:
        raise SystemExit(f"fairseq-bso-prune: {path}: not a fairseq checkpoint (no 'model' entry)")
    found = nonfinite_parameters(state["model"])
    if found:
        raise SystemExit(f"fairseq-bso-prune: {describe_nonfinite(path, found)}")
    return state


def save_atomic(obj, path: str) -> int:
    """``torch.save`` through a temporary file renamed into place, with the umask's permissions
    (``safe_io.write_with``); a failed write names ``path`` and leaves the old file."""
    from ..safe_io import write_with

    return write_with(path, lambda tmp: torch.save(obj, tmp))


def check_write_paths(command: str, inputs, outputs, force: bool) -> None:
    """The package's writer rule (``fairseq_bso.safe_io``) for export/densify: no output is an input or another
    output, no existing file this command did not write is overwritten (unless ``--force``), and every
    output's folder exists."""
    from ..safe_io import OutputRefused, check_outputs, check_parent_exists

    outputs = [o for o in outputs if o]
    try:
        for out in outputs:
            check_parent_exists(out, "")
        check_outputs(outputs, inputs, f"fairseq-bso-prune {command}", force=force)
    except OutputRefused as e:
        raise SystemExit(f"fairseq-bso-prune {command}: error: {e}")


def save_outputs(command: str, items) -> list:
    """Write (object, path) pairs atomically and record them as this command's; returns the sizes."""
    from ..safe_io import WriteError, record_outputs

    sizes = []
    try:
        for obj, path in items:
            sizes.append(save_atomic(obj, path))
    except WriteError as e:
        raise SystemExit(f"fairseq-bso-prune {command}: error: {e}")
    record_outputs([path for _, path in items], f"fairseq-bso-prune {command}")
    return sizes


def load_sparse(path: str) -> dict:
    """A ``--sparse`` copy, loaded safely, with errors naming the file."""
    import fairseq_bso  # noqa: F401
    from ..fairseq_fixes.checkpoint_files import describe_load_error

    if not os.path.isfile(path):
        raise SystemExit(f"fairseq-bso-prune densify: {path}: no such file")
    try:
        packed = torch.load(path, map_location="cpu")
    except Exception as e:
        raise SystemExit(f"fairseq-bso-prune densify: {describe_load_error(path, e)}")
    if not isinstance(packed, dict) or packed.get("format") != SPARSE_FORMAT:
        raise SystemExit(f"fairseq-bso-prune densify: {path}: not a {SPARSE_FORMAT} file (written by "
                         f"fairseq-bso-prune export --sparse)")
    return packed


def stats(state: dict, kinds=KINDS) -> str:
    weights = prunable(state["model"].items(), kinds)
    rows = sparsity_table(OrderedDict(weights))
    unique = {(t.data_ptr(), tuple(t.shape)): t for t in state["model"].values() if t.is_floating_point()}
    all_nz = sum(int(torch.count_nonzero(t)) for t in unique.values())  # a tied weight counts once
    all_n = sum(t.numel() for t in unique.values())
    return (format_table(rows) + f"\nall parameters (biases included): {all_nz:,} non-zero of {all_n:,} "
            f"({1 - all_nz / max(all_n, 1):.2%} sparse)")


def stock_checkpoint(state: dict) -> dict:
    """A copy that stock fairseq loads: plugin task/criterion replaced, no user dir, no optimizer state."""
    out = {k: v for k, v in state.items() if k not in ("last_optimizer_state",)}
    cfg = copy.deepcopy(state.get("cfg"))
    notes = []
    if cfg is not None:
        task = cfg.get("task") or {}
        base = exported_task(task.get("_name"))
        if base != task.get("_name"):
            if task.get("constraint", "none") != "none":
                notes.append(f"the model was trained with --constraint {task['constraint']}; stock fairseq decodes "
                             f"it without the constraint")
            keep = stock_task_fields(base)
            cfg["task"] = {**{k: v for k, v in task.items() if keep is None or k in keep}, "_name": base}
        crit = cfg.get("criterion") or {}
        if crit.get("_name") in PLUGIN_CRITERIONS:
            cfg["criterion"] = {"_name": "cross_entropy", "sentence_avg": False}
        if cfg.get("common", {}).get("user_dir"):
            cfg["common"]["user_dir"] = None
        # fairseq stores a legacy (argparse) model's config as an argparse.Namespace, which torch >= 2.6 refuses
        # to unpickle unless someone allow-lists it (the plugin does); a plain dict loads everywhere
        model_cfg = cfg.get("model")
        if isinstance(model_cfg, argparse.Namespace):
            model_cfg = vars(model_cfg)
            cfg["model"] = dict(model_cfg, _name=model_cfg.get("_name") or model_cfg.get("arch"))
            cfg["model"] = {k: _plain(v) for k, v in cfg["model"].items()}
        out["cfg"] = cfg
        out["args"] = None
    elif state.get("args") is not None:  # a pre-hydra checkpoint: stock fairseq needs the plugin's allow-list
        args = copy.deepcopy(state["args"])
        if getattr(args, "task", None):
            args.task = exported_task(args.task)
        if getattr(args, "criterion", None) in PLUGIN_CRITERIONS:
            args.criterion = "cross_entropy"
        args.user_dir = None
        out["args"] = args
    hist = out.get("optimizer_history")
    if hist:
        out["optimizer_history"] = [dict(h, criterion_name="CrossEntropyCriterion") for h in hist]
    return out, notes


def _plain(value):
    if isinstance(value, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def to_sparse(state: dict) -> dict:
    """Pruned matrices as (bit mask, non-zero values); everything else as is."""
    sparse, dense = {}, OrderedDict()
    for name, t in state["model"].items():
        if t.is_floating_point() and t.dim() >= 2:
            keep = t.ne(0)
            if keep.sum() * t.element_size() + t.numel() / 8 < t.numel() * t.element_size():
                bits = torch.from_numpy(np.packbits(keep.reshape(-1).numpy()))
                sparse[name] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                                "mask": bits, "values": t[keep].clone()}
                continue
        dense[name] = t
    out = {k: v for k, v in state.items() if k != "model"}
    out.update(format=SPARSE_FORMAT, order=list(state["model"].keys()), dense=dense, sparse=sparse)
    return out


def from_sparse(packed: dict) -> dict:
    if packed.get("format") != SPARSE_FORMAT:
        raise SystemExit(f"fairseq-bso-prune densify: not a {SPARSE_FORMAT} file")
    model = OrderedDict()
    for name in packed["order"]:
        if name in packed["dense"]:
            model[name] = packed["dense"][name]
            continue
        item = packed["sparse"][name]
        n = int(np.prod(item["shape"]))
        keep = torch.from_numpy(np.unpackbits(item["mask"].numpy())[:n].astype(bool))
        flat = torch.zeros(n, dtype=getattr(torch, item["dtype"]))
        flat[keep] = item["values"]
        model[name] = flat.view(item["shape"])
    out = {k: v for k, v in packed.items() if k not in ("format", "order", "dense", "sparse")}
    out["model"] = model
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="fairseq-bso-prune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stats", help="per-class and total sparsity and non-zero counts of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--classes", default=",".join(KINDS), help="weight kinds to count (default: all)")
    p = sub.add_parser("export", help="a checkpoint stock fairseq-generate loads without the plugin")
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--sparse", metavar="PATH", help="also write a compact sparse copy here")
    p.add_argument("--force", action="store_true",
                   help="overwrite existing files this command did not write (never the input checkpoint)")
    p.add_argument("--user-dir", metavar="DIR",
                   help="the folder that registers the checkpoint's task, when it is your own (a pruned twin of it "
                        "is exported as your task)")
    p = sub.add_parser("densify", help="turn a --sparse copy back into a checkpoint")
    p.add_argument("sparse")
    p.add_argument("output")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing file this command did not write (never the input)")
    args = parser.parse_args(argv)

    if args.command == "stats":
        try:
            kinds = parse_kinds(args.classes)
        except ValueError as e:
            raise SystemExit(f"fairseq-bso-prune: {e}")
        print(stats(load(args.checkpoint), kinds))
    elif args.command == "export":
        if args.user_dir:
            from fairseq.utils import import_user_module
            import_user_module(argparse.Namespace(user_dir=args.user_dir))
        check_write_paths("export", [args.checkpoint], [args.output, args.sparse], args.force)
        state = load(args.checkpoint)
        out, notes = stock_checkpoint(state)
        items = [(out, args.output)] + ([(to_sparse(out), args.sparse)] if args.sparse else [])
        sizes = save_outputs("export", items)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"wrote {args.output}: {sizes[0]:,} bytes (stock fairseq checkpoint)")
        if args.sparse:
            print(f"wrote {args.sparse}: {sizes[1]:,} bytes (sparse copy; fairseq-bso-prune densify restores it)")
    else:
        check_write_paths("densify", [args.sparse], [args.output], args.force)
        packed = load_sparse(args.sparse)
        size, = save_outputs("densify", [(from_sparse(packed), args.output)])
        print(f"wrote {args.output}: {size:,} bytes")


if __name__ == "__main__":
    main()
