"""Class activation maps: Grad-CAM and its variants, one weighting function per variant.

Every variant shares the same steps (target resolution, one batched run for the layer's
activations and gradients, weighted sum, ReLU, upsampling, normalisation); a variant only says
how the layer's channels are weighed: a row of ``VARIANTS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.graph import ancestors, bottlenecks
from onnxsight.engine.model import Inputs, Model, rows, take
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import cam as k
from onnxsight.kernels import tokens
from onnxsight.kernels.colors import normalize_each
from onnxsight.methods.common import (
    Tally, repeat_rows, require_image, rows_of, rows_per_run, spatial_size, split_inputs, with_context,
)
from onnxsight.methods.fullgrad import fullgrad
from onnxsight.methods.occlusion import CHUNK_BYTES, copy_scores
from onnxsight.methods.rollout import attention_tensors

@dataclass(frozen=True)
class Probes:
    """The forward runs a gradient-free variant may ask for.

    masked(a, probability=False): (N, K) target scores of the input masked by each upsampled channel of
        ``a`` (Score-CAM; ``probability``: the target's softmax probability over ``of``);
    ablated(): the (N,) target scores and the (N, K) scores with channel k of the layer zeroed (Ablation-CAM).
    """

    masked: Callable[..., np.ndarray]
    ablated: Callable[[], tuple[np.ndarray, np.ndarray]]


# (channel-last activations, gradients or None, probes) -> weights broadcastable to the activations.
Weights = Callable[[np.ndarray, "np.ndarray | None", Probes], np.ndarray]


@dataclass(frozen=True)
class Variant:
    """How one CAM weighs the layer's channels; ``gradients``: whether it needs d(score)/d(layer);
    ``project``: (N, h, w, K) weighted activations -> (N, h, w) maps instead of their channel sum
    (Eigen-CAM's first principal component); ``per_channel``: it runs the model once per channel and image."""

    weights: Weights
    gradients: bool = True
    project: Callable[[np.ndarray], np.ndarray] | None = None
    per_channel: bool = False


def _from_gradients(rule: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Variant:
    return Variant(lambda a, g, probes: rule(a, g))


VARIANTS: dict[str, Variant] = {
    **{name: _from_gradients(rule) for name, rule in k.GRADIENT_WEIGHTS.items()},
    "scorecam": Variant(lambda a, g, probes: k.scorecam_weights(probes.masked(a)), gradients=False, per_channel=True),
    "eigencam": Variant(lambda a, g, probes: np.ones((1, 1, 1, a.shape[-1])), gradients=False, project=k.eigen_projection),
    "eigengradcam": Variant(lambda a, g, probes: k.eigengradcam_weights(a, g), project=k.eigen_projection),
    "ablationcam": Variant(lambda a, g, probes: k.ablation_weights(*probes.ablated()), gradients=False, per_channel=True),
    "kpcacam": Variant(lambda a, g, probes: np.ones((1, 1, 1, a.shape[-1])), gradients=False, project=k.kpca_projection),
}


FULLGRAD = "fullgrad"  # a variant of its own module: it weighs every biased layer, not one layer's channels


@dataclass(frozen=True)
class Convention:
    """A peer's choices where they differ from onnxsight's: its weighting rules (replacing rows of
    ``VARIANTS``), default upsampling, Score-CAM masks' upsampling (None: the CAM's), and whether
    Guided Grad-CAM multiplies the min-max scaled CAM (rather than the CAM) by the guided gradient."""

    variants: dict[str, Variant]
    upsample: str = "bilinear"
    masks: str | None = None
    scaled_guide: bool = False


CONVENTIONS: dict[str, Convention] = {
    "onnxsight": Convention({}),
    "pytorch-grad-cam": Convention(
        {"gradcam++": _from_gradients(lambda a, g: k.gradcam_plus_plus_weights(a, g, k.GRADCAM_PLUS_PLUS_EPS))},
        masks="align_corners", scaled_guide=True),
    "tf-keras-vis": Convention(
        {"gradcam++": _from_gradients(k.gradcam_plus_plus_normalized_weights),
         "scorecam": Variant(lambda a, g, probes: k.scorecam_probability_weights(probes.masked(a, True)),
                             gradients=False, per_channel=True)},
        upsample="align_corners"),
}


def gradcam(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    layer: str | None = None,
    variant: str = "gradcam",
    guided: bool = False,
    modifier: str | None = None,
    relu: bool = True,
    upsample: str | None = None,
    normalize: bool = True,
    convention: str = "onnxsight",
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
    of: str = "logits",
    output: str | None = None,
    tokens_grid: Sequence[int] | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Class activation maps of a batch ``x`` at the input's size, (N, H, W) float32.

    target: a class of ``of`` (default "predicted": the argmax on the clean input), one per
        image, a channel of an intermediate layer ``of`` (scored by its mean), or None (sum).
    layer: the layer whose feature maps are weighed; default :func:`default_cam_layer`. A token
        layer (N, T, D) of a vision transformer is laid on its patch grid first, the leading extra
        tokens (class, registers) dropped, as pytorch-grad-cam's ``reshape_transform`` does.
    variant: "gradcam" (default: spatial mean of the gradient), "gradcam++", "xgradcam",
        "hirescam", "layercam" or "scorecam" (see ``onnxsight.kernels.cam`` for each formula).
        Score-CAM's channel weights are the softmax over channels of the target's score of ``of``
        (logits by default) on the input masked by each channel (upsampled with ``upsample``,
        min-max scaled to [0, 1]), as pytorch-grad-cam's weights (its masks: ``convention``); the
        paper scores post-softmax confidence increases instead. All N·K masked copies run in large batches.
    guided: Guided Grad-CAM: the CAM times the guided-backprop gradient of the same target at the
        input, reduced over input channels by max |.|, then normalised (default False). The CAM is
        not min-max scaled first (the paper's and Captum's order: scaling would blank its weakest
        region); pytorch-grad-cam's order is ``convention="pytorch-grad-cam"``.
        From pytorch-grad-cam: "gradcamelementwise" (sum_k relu(a·g)), "eigencam" (the first
        principal component of the activations, no gradient), "eigengradcam" (the same of a·g),
        "kpcacam" (the first kernel principal component, sigmoid kernel, of the activations; its
        (h·w)² kernel matrix per image suits small layers) and "ablationcam": weights (y − y_k)/y,
        y_k the score with channel k of the layer zeroed, the N·K ablated copies of the layer run
        through the graph from the layer on in large batches (pytorch-grad-cam ablates with
        min − 1e7 instead of 0 where an image's activations at the layer have a minimum other than 0).
        "fullgrad": :func:`onnxsight.methods.fullgrad.fullgrad` (every biased layer; no ``layer``).
    modifier: backprop modifier of the gradient to ``layer`` — None (default), "guided" or
        "deconv" (keras-vis' ``visualize_cam(backprop_modifier=...)``, seed 002's guided and
        rectified Grad-CAM); not for Score-CAM, which uses no gradient.
    relu: ReLU on the weighted sum (default True, as in Grad-CAM).
    upsample: "bilinear" or "nearest" resizing to the input's H×W with OpenCV, or "align_corners"
        (bilinear, corner pixels aligned: tf-keras-vis' scipy zoom); default the convention's.
    normalize: min-max scale each map to [0, 1] (default True; constant maps become 0).
    convention: "onnxsight" (default: the papers' formulas, OpenCV's bilinear upsampling),
        "pytorch-grad-cam" (Grad-CAM++ with eps 1e-6 in the alphas' denominator; Score-CAM masks
        upsampled with corners aligned; Guided Grad-CAM from the min-max scaled CAM) or
        "tf-keras-vis" (Grad-CAM++ alphas normalised by their spatial sum; Score-CAM weighted by
        the target's class probability — softmax over the classes of ``of`` — on each masked
        input, not by a softmax over channels; upsampling "align_corners").
    eigen_smooth: the map is the first principal component of the weighted activations instead of
        their sum (pytorch-grad-cam's ``eigen_smooth``; default False; the Eigen and KPCA variants
        project anyway).
    aug_smooth: test-time augmentation as pytorch-grad-cam's ``aug_smooth``: the mean of the maps
        (each min-max scaled to [0, 1]) of the image and its horizontal flip, each at brightness
        × 0.9, 1 and 1.1, flipped back; the target is resolved once on the image itself (default False).
    of: the scored tensor, default "logits" (softmax swapped for linear); any layer name.
    output: the head "logits" refers to in a model with several outputs (default: the first
        classification head). A model with several inputs takes ``x`` as a dict by input name;
        maps have the primary image input's size, and Score-CAM masks only that input.
    tokens_grid: (rows, columns) of patches for a token layer; default found from T and the input
        size (:func:`onnxsight.kernels.tokens.patch_grid`).
    batch_size: rows per onnxruntime run (default 64).
    progress: called after each onnxruntime run with (images done, images) for the layer's gradients,
        or for Score-CAM and Ablation-CAM with (copies scored, copies in all).
    """
    model = model.with_output(output)
    x, context = split_inputs(model, x)
    inputs = with_context(model, x, context)
    cam_variant(variant, convention)
    peer, input_axis = CONVENTIONS[convention], require_image(model, "gradcam")
    if variant == FULLGRAD:
        check_fullgrad(layer, modifier, guided, eigen_smooth)
    indices = model.resolve_target(inputs, target, of, batch_size)
    options = dict(layer=layer, variant=variant, modifier=modifier, relu=relu, upsample=upsample, convention=convention,
                   eigen_smooth=eigen_smooth, of=of, tokens_grid=tokens_grid, batch_size=batch_size, progress=progress)
    if aug_smooth:
        width_axis = 2 if input_axis == 3 else 3
        copies = len(k.AUGMENTATIONS)
        maps = _cam(model, k.augmented(x, width_axis), {n: repeat_rows(v, copies) for n, v in context.items()},
                    targets.tile(indices, copies), **options)
        cam = k.deaugmented_mean(normalize_each(maps))
    else:
        cam = _cam(model, x, context, indices, **options)
    if guided:
        saliency = model.gradient(inputs, of=of, target=indices, modifier="guided", batch_size=batch_size)["input"]
        cam = k.guided(normalize_each(cam) if peer.scaled_guide else cam, saliency, input_axis)
    if normalize:
        cam = normalize_each(cam)
    return cam.astype(np.float32)


def _cam(
    model: Model, x: np.ndarray, context: dict[str, np.ndarray], indices: targets.Resolved, *, layer: str | None,
    variant: str, modifier: str | None, relu: bool, upsample: str | None, convention: str, eigen_smooth: bool, of: str,
    tokens_grid: Sequence[int] | None, batch_size: int, progress: Callable[[int, int], None] | None,
) -> np.ndarray:
    """The maps of ``gradcam`` before Guided Grad-CAM and normalisation, for resolved targets."""
    inputs = with_context(model, x, context)
    peer = CONVENTIONS[convention]
    upsample = peer.upsample if upsample is None else upsample
    k.check_upsample(upsample)
    if variant == FULLGRAD:
        return fullgrad(model, inputs, indices, upsample=upsample, normalize=False, of=of, batch_size=batch_size,
                        progress=progress)
    rule = cam_variant(variant, convention)
    if modifier is not None and not rule.gradients:
        raise InvalidArgument(f"modifier {modifier!r} changes gradients; the {variant} variant uses none")
    input_axis = require_image(model, "gradcam")
    size = spatial_size(x, input_axis)
    layer = default_cam_layer(model) if layer is None else check_cam_layer(model, layer)
    tally = Tally(len(x), progress if rule.gradients else None)
    a, g = _layer_values(model, inputs, layer, of, indices, rule.gradients, modifier, size, tokens_grid, batch_size, tally)

    def masked_scores(acts: np.ndarray, probability: bool = False) -> np.ndarray:
        channels = acts.shape[-1]

        def masked(start: int, stop: int) -> np.ndarray:
            rows = np.arange(start, stop)
            images = rows // channels
            return k.masked_inputs(x, acts[images, :, :, rows % channels], images, size, peer.masks or upsample, input_axis)

        scores = copy_scores(model, x, channels, masked, indices, of, batch_size, progress, context, probability)
        return scores.reshape(len(x), channels)

    def ablated_scores() -> tuple[np.ndarray, np.ndarray]:
        return layer_ablations(model, inputs, layer, of, indices, batch_size, progress)

    weights = rule.weights(a, g, Probes(masked_scores, ablated_scores))
    cam = k.weighted_sum(a, weights, relu, rule.project or (k.eigen_projection if eigen_smooth else None))
    return k.upsample(cam, size, upsample)


def layer_ablations(
    model: Model, x: Inputs, layer: str, of: str, indices: np.ndarray | None, batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The (N,) target scores of ``x`` and the (N, K) scores with channel k of ``layer`` zeroed, float64.

    The layer's activations are computed once; the N·K ablated copies run through the graph from the
    layer on (``Model.run_from``), built in chunks of at most ``CHUNK_BYTES`` and run ``batch_size``
    rows at a time, each run reported as ``progress(copies scored, N·K)``.
    """
    tensor, scored = model.tensor(layer), model.tensor(of)
    acts, values = model.run(x, [tensor, scored], batch_size=batch_size)
    axis, score_axis = (model.channel_axis(layer) if acts.ndim == 4 else acts.ndim - 1), model.channel_axis(of)
    channels = acts.shape[axis]
    total = len(acts) * channels
    ablated, tally, step = np.empty(total), Tally(total, progress), max(1, CHUNK_BYTES // acts[0].nbytes)
    for start in range(0, total, step):
        flat = np.arange(start, min(total, start + step))
        images = flat // channels
        copies = acts[images]
        np.moveaxis(copies, axis, 1)[np.arange(len(flat)), flat % channels] = 0
        for run in tally.runs(len(flat), rows_per_run(model, batch_size)):
            out = model.run_from(tensor, copies[run], [scored], x, images[run], batch_size)[0]
            ablated[flat[run]] = _scores(out, None if indices is None else indices[images[run]], score_axis)
    return _scores(values, indices, score_axis), ablated.reshape(len(acts), channels)


def _scores(values: np.ndarray, indices: np.ndarray | None, channel_axis: int) -> np.ndarray:
    """Per row the target's score of ``values`` (see ``methods.common.target_scores``), float64."""
    weights = targets.cotangent(values.shape, indices, channel_axis, np.float64)
    return (weights * values).reshape(len(values), -1).sum(axis=1)


def cam_variant(name: str, convention: str = "onnxsight") -> Variant | None:
    """The variant called ``name`` in ``convention`` (None for FullGrad, which weighs no layer's
    channels), or InvalidArgument listing them."""
    if name not in VARIANTS and name != FULLGRAD:
        raise InvalidArgument(f"unknown CAM variant {name!r}; choose one of {', '.join([*VARIANTS, FULLGRAD])}")
    check_convention(convention)
    return None if name == FULLGRAD else CONVENTIONS[convention].variants.get(name, VARIANTS[name])


def check_fullgrad(layer: str | None, modifier: str | None, guided: bool, eigen_smooth: bool) -> None:
    if layer is not None or modifier is not None or guided or eigen_smooth:
        raise InvalidArgument("the fullgrad variant uses every biased layer and exact gradients: it takes no layer, "
                              "modifier, guided or eigen_smooth")


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise InvalidArgument(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    return convention


def default_cam_layer(model: Model) -> str:
    """The last layer with a spatial output before the first flat one (Flatten, global pooling, Dense)
    on the model's trunk.

    Layers are walked in order; a spatial layer has a 4-D output larger than 1×1 (5-D ones, a
    ShuffleNet's channel shuffle, neither end nor extend the walk). Only layers
    that every path from the input to the logits passes through count (a residual block's output,
    not a layer inside the block; not a squeeze-and-excitation branch, whose pooled 1×1 tensors
    would otherwise end the walk inside the first SE block of a MobileNetV3 or EfficientNet).
    This is keras-vis' "nearest pre layer" (seed 002): for seed 000's CNN ``max_pooling2d_2``,
    4×4; for a torchvision ResNet ``layer4``. Of several names for one tensor the last listed
    (the outermost module) is taken. A model whose attention follows that layer (a vision
    transformer) gets the token stream entering its last attention block instead (see ``_token_layer``).
    Found once per model and head (``Model.memo``).
    """
    return model.memo(("default_cam_layer", model.head), lambda: _find_default_cam_layer(model))


def _find_default_cam_layer(model: Model) -> str:
    trunk = bottlenecks(model.proto.graph, model.input_name, model.tensor("logits"))
    chosen = None
    for layer in model.layers:
        if layer.shape is None or layer.tensor not in trunk:
            continue
        if _spatial(model, layer.name):
            chosen = layer.name
        elif chosen is not None and len(layer.shape) <= 4:  # 5-D: a channel shuffle's (N, g, C/g, H, W)
            break
    token = _token_layer(model, trunk)
    if token is not None and (chosen is None or model.layer(chosen).tensor in ancestors(model.proto.graph, model.tensor(token))):
        return token  # a vision transformer: its patch embedding is the last spatial layer
    if chosen is None:
        raise InvalidArgument(f"{model.source} has no layer with a spatial (4-D) output or tokens for a CAM")
    return chosen


def _token_layer(model: Model, trunk: set[str]) -> str | None:
    """For a vision transformer, the token stream (N, T, D) entering its last attention block: the last
    trunk layer with the attention's T tokens that the last attention softmax reads (the residual
    stream; pytorch-grad-cam takes ``blocks[-1].norm1``, its LayerNorm, since after the last attention
    only the class token reaches the logits). None for a model without attention."""
    try:
        last = attention_tensors(model)[-1]
    except InvalidArgument:
        return None
    feeding, tokens = ancestors(model.proto.graph, last) & trunk, model.shapes[last][-1]
    chosen = [layer.name for layer in model.layers if layer.tensor in feeding and layer.shape is not None
              and len(layer.shape) == 3 and (tokens is None or layer.shape[1] == tokens)]
    return chosen[-1] if chosen else None


def check_cam_layer(model: Model, layer: str) -> str:
    """``layer`` if it has a spatial (4-D) or token (N, T, D) output, else InvalidArgument naming its
    shape and the default."""
    shape = model.layer(layer).shape
    if shape is not None and len(shape) not in (3, 4):
        try:
            hint = f"; the default CAM layer is {default_cam_layer(model)!r}"
        except InvalidArgument:
            hint = ""
        dims = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
        raise InvalidArgument(f"layer {layer!r} has no spatial output (shape {dims}) for a CAM{hint}")
    return layer


def _spatial(model: Model, name: str) -> bool:
    shape = model.layer(name).shape
    if shape is None or len(shape) != 4:
        return False
    axis = model.channel_axis(name)
    return any(d is None or d > 1 for i, d in enumerate(shape[1:], 1) if i != axis)


def _layer_values(
    model: Model, x: Inputs, layer: str, of: str, indices: np.ndarray | None, gradients: bool,
    modifier: str | None, size: tuple[int, int], tokens_grid: Sequence[int] | None, batch_size: int, tally: Tally,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The layer's activations and (if asked) the target score's gradient there, ``batch_size`` rows per
    run, each counted in ``tally``.

    Channel-last float64 (N, h, w, K); tokens (N, T, D) on their patch grid (see ``gradcam``).
    """
    if gradients:
        results = [model.backward(take(x, run), of, rows_of(indices, run), [layer], modifier=modifier, outputs=[layer],
                                  batch_size=batch_size) for run in tally.runs(rows(x), rows_per_run(model, batch_size))]
        a = np.concatenate([r.activations[layer] for r in results])
        g = np.concatenate([r.gradients[layer] for r in results])
    else:
        a, g = model.activations(x, [layer], batch_size=batch_size)[layer], None
    if a.ndim == 4:
        axis = model.channel_axis(layer)
        return k.channels_last(a, axis), None if g is None else k.channels_last(g, axis)
    if a.ndim == 3:
        grid = tokens.patch_grid(a.shape[1], size) if tokens_grid is None else tuple(tokens_grid)
        return tokens.to_grid(a, grid), None if g is None else tokens.to_grid(g, grid)
    raise InvalidArgument(f"layer {layer!r} has no spatial or token output (shape {a.shape}) for a CAM")
