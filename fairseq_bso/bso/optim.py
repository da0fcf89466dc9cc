"""``--optimizer bso_adagrad``: Adagrad with one learning rate per layer (the authors' ``-layer_etas``).

The BSO authors trained with Adagrad and three learning rates, one per "layer" of their
model (``bso_train.lua``: ``-adagrad -layer_etas enc,dec,out``; word ordering
``0.02,0.02,0.2``, MT ``0.02,0.02,0.1``): the output layer, which sets the scale of the
raw scores BSO ranks by, learns 5-10x faster than the rest.  fairseq has no parameter
groups on the command line, so this optimizer builds them itself:

    --optimizer bso_adagrad --bso-layer-lrs 0.02,0.02,0.2     # encoder, decoder, output layer

Layers (:func:`layer_of_parameters`, for fairseq encoder-decoder models):

* ``output``: the decoder's projection to the vocabulary and what feeds it only: the
  modules ``fc_out``, ``additional_fc`` (the LSTM's hidden → output-embedding
  projection), ``output_projection`` (Transformer), ``adaptive_softmax``, and, when the
  decoder shares its input embedding with the output projection
  (``--share-decoder-input-output-embed``, or all embeddings shared), that matrix.
  This differs from the authors' model, whose decoder embedding is separate from the
  output layer: with a shared matrix the decoder's input embedding learns at the output
  rate.
* ``encoder``: every other parameter of ``model.encoder``;
* ``decoder``: every other parameter of the model.

The update is torch's Adagrad (``eps`` 1e-10, initial accumulator 0, no learning-rate
decay), which is exactly the authors' ``adagradStep`` (``var += g²; x -= η·g /
(sqrt(var) + 1e-10)``), one ``η`` per layer.  The authors zeroed the accumulators
whenever the beam curriculum grew K; ``--bso-curriculum-reset-optimizer`` (criterion
``bso``) does that with this optimizer too (its ``optimizer`` is a ``torch.optim.Adagrad``).

Learning-rate schedules.  fairseq's schedulers set one learning rate; this optimizer
scales every layer's rate by ``scheduled lr / --lr``, so with the default ``fixed``
schedule the layers train at exactly ``--bso-layer-lrs`` whatever ``--lr`` is, and a
decaying schedule decays them together.  ``get_lr`` (what fairseq logs as ``lr``) is the
scheduled rate, not a layer's.  Without ``--bso-layer-lrs`` every layer trains at
``--lr`` (fairseq's ``adagrad``).

Finding the layers.  fairseq passes an optimizer a flat list of parameters, without
names.  Parameters tagged by :func:`tag_layers` (attribute ``bso_layer``) are grouped by
their tag; otherwise the optimizer looks up the live fairseq model that owns all of
them (a scan of the garbage collector's objects, once, at construction) and tags it.
A parameter outside that model (e.g. a criterion's) is an error naming the option.

Differences from the authors' training that remain: their loss is summed over the
batch of 64 and the gradient norm clipped to 5; the ``bso`` criterion averages over
sentences, so ``--clip-norm 5`` clips less often (Adagrad itself is invariant to the
gradient's scale).
"""

import gc
import logging
from dataclasses import dataclass, field
from typing import Dict, List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

logger = logging.getLogger(__name__)

LAYERS = ("encoder", "decoder", "output")
OUTPUT_MODULES = ("fc_out", "additional_fc", "output_projection", "adaptive_softmax")
EPS = 1e-10  # the authors' adagradStep and torch's Adagrad


def parse_layer_lrs(text: str) -> Dict[str, float]:
    """'0.02,0.02,0.2' → {'encoder': 0.02, 'decoder': 0.02, 'output': 0.2}; a clear error otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        rates = [float(p) for p in parts]
    except ValueError:
        rates = []
    if len(rates) != len(LAYERS) or not all(r > 0 for r in rates):
        raise ValueError(f"--bso-layer-lrs must be three positive learning rates 'encoder,decoder,output' "
                         f"(e.g. 0.02,0.02,0.2), got {text!r}")
    return dict(zip(LAYERS, rates))


def layer_of_parameters(model) -> Dict[int, str]:
    """{id(parameter): layer} for every parameter of a fairseq encoder-decoder model (see the module's doc)."""
    encoder, decoder = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if encoder is None or decoder is None:
        raise ValueError(f"--optimizer bso_adagrad needs an encoder-decoder model (model.encoder, model.decoder); "
                         f"{type(model).__name__} has none")
    output = set()
    for name in OUTPUT_MODULES:
        module = getattr(decoder, name, None)
        if isinstance(module, torch.nn.Module):
            output.update(id(p) for p in module.parameters())
    embed = getattr(decoder, "embed_tokens", None)
    if getattr(decoder, "share_input_output_embed", False) and embed is not None:
        output.update(id(p) for p in embed.parameters())
    if not output:
        raise ValueError(f"--optimizer bso_adagrad found no output layer in {type(decoder).__name__} "
                         f"(looked for {', '.join(OUTPUT_MODULES)} and a shared input/output embedding)")
    layers = {id(p): "encoder" for p in encoder.parameters()}
    for p in model.parameters():
        layers.setdefault(id(p), "decoder")
    layers.update({i: "output" for i in output})  # a matrix shared by encoder and output is the output layer
    return layers


def tag_layers(model) -> None:
    """Tag every parameter of ``model`` with its layer (attribute ``bso_layer``)."""
    layers = layer_of_parameters(model)
    for p in model.parameters():
        p.bso_layer = layers[id(p)]


def _live_models():
    """Every live fairseq model (the optimizer is built from parameters alone: their model is found on the heap,
    once, when the optimizer is built)."""
    from fairseq.models import BaseFairseqModel

    return [obj for obj in gc.get_objects() if isinstance(obj, BaseFairseqModel)]


def _owning_model(params, models):
    """The model of ``models`` whose parameters include all of ``params`` (the smallest, if nested)."""
    wanted = {id(p) for p in params}
    found = []
    for obj in models:
        own = {id(p) for p in obj.parameters()}
        if wanted <= own:
            found.append((len(own), id(obj), obj))
    if not found:
        raise ValueError("--optimizer bso_adagrad: the parameters it was given do not all belong to one fairseq "
                         "model (a criterion with parameters?); tag them with fairseq_bso.bso.optim.tag_layers")
    return min(found)[2]


def _half_model_copied(params, models):
    """The trainable parameters of the one float16/bfloat16 model of ``models`` whose trainable parameters have the
    shapes of ``params``, in order (``params`` are then the float32 master copies fairseq's ``FP16Optimizer``
    builds one per parameter under ``--fp16-no-flatten-grads``), tagged by :func:`tag_layers`; else None.
    A single flat float32 vector as long as such a model (``--fp16``'s flat master copy) is refused."""
    shapes = [tuple(p.shape) for p in params]
    numel = sum(p.numel() for p in params)
    found, flat = {}, False
    for obj in models:
        trainable = [p for p in obj.parameters() if p.requires_grad]
        if not trainable or any(p.dtype not in (torch.float16, torch.bfloat16) for p in trainable):
            continue
        if [tuple(p.shape) for p in trainable] == shapes:
            found[id(obj)] = (obj, trainable)
        elif len(params) == 1 and params[0].dim() == 1 and sum(p.numel() for p in trainable) == numel:
            flat = True
    if flat and not found:
        raise ValueError("--optimizer bso_adagrad needs one float32 master copy per parameter under --fp16: add "
                         "--fp16-no-flatten-grads (the flat copy has no layers)")
    if len(found) != 1:
        return None
    model, trainable = next(iter(found.values()))
    tag_layers(model)
    return trainable


def group_parameters(params, rates: Dict[str, float]) -> List[dict]:
    """torch parameter groups, one per layer, each with its ``lr`` and ``layer`` name (empty layers left out)."""
    params = list(params)
    if any(not hasattr(p, "bso_layer") for p in params):
        models = _live_models()
        copied = _half_model_copied(params, models)
        if copied is not None:  # FP16Optimizer's float32 master copies take the layers of the half parameters
            for p, half in zip(params, copied):
                p.bso_layer = half.bso_layer
        else:
            tag_layers(_owning_model(params, models))
    groups = [{"params": [p for p in params if p.bso_layer == layer], "lr": rates[layer], "layer": layer}
              for layer in LAYERS]
    return [g for g in groups if g["params"]]


@dataclass
class BSOAdagradConfig(FairseqDataclass):
    bso_layer_lrs: str = field(
        default="", metadata={"help": "Adagrad learning rates of the encoder, the decoder and the output layer, "
                                      "comma-separated (the BSO authors' -layer_etas: 0.02,0.02,0.2 for word "
                                      "ordering, 0.02,0.02,0.1 for MT); the schedule scales them by lr/--lr; "
                                      "empty: --lr for every layer"})
    lr: List[float] = II("optimization.lr")


@register_optimizer("bso_adagrad", dataclass=BSOAdagradConfig)
class BSOAdagrad(FairseqOptimizer):
    def __init__(self, cfg: BSOAdagradConfig, params):
        super().__init__(cfg)
        self.base_lr = float(cfg.lr[0])
        if not self.base_lr > 0:
            raise ValueError(f"--optimizer bso_adagrad needs --lr > 0, got {self.base_lr}")
        rates = (parse_layer_lrs(cfg.bso_layer_lrs) if str(cfg.bso_layer_lrs or "").strip()
                 else dict.fromkeys(LAYERS, self.base_lr))
        groups = group_parameters(params, rates)
        self.rates = [g["lr"] for g in groups]
        self._optimizer = torch.optim.Adagrad(groups, lr=self.base_lr, eps=EPS)
        logger.info("bso_adagrad: " + ", ".join(
            f"{g['layer']} lr {g['lr']:g} ({sum(p.numel() for p in g['params'])} parameters)" for g in groups))

    @property
    def optimizer_config(self):
        return {"lr": self.base_lr}

    def get_lr(self):
        """The scheduled learning rate (every layer's rate is it × its --bso-layer-lrs / --lr)."""
        return self.param_groups[0]["lr"] * self.base_lr / self.rates[0]

    def set_lr(self, lr):
        for group, rate in zip(self.param_groups, self.rates):
            group["lr"] = lr * rate / self.base_lr

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        """torch's state (accumulators) from a checkpoint; the layers' rates stay this run's."""
        lr = self.get_lr()
        self.optimizer.load_state_dict(state_dict)
        self.set_lr(lr)

    @property
    def supports_flat_params(self):
        return False
