"""pytorch-grad-cam's FinerCAM on a plain model: the independent reference for tests and benchmarks.

Our maps come from one trunk pass and one backward for all concepts (docs/design.md); this
module runs the other way, the one a pytorch-grad-cam user writes: the model with a
zero-shot (or linear) head on top, hooks on the target layer, one backward per concept. The
equivalence tests compare the two maps, the benchmarks time the two ways.

pytorch-grad-cam ("grad-cam" on PyPI) is a test and benchmark dependency only, never needed
to use zsfinercam: it is imported inside the functions that call it, so importing this module
(or the package) never needs it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.bases import get_base


class ImageTower(nn.Module):
    """An image tower as a module: x -> `call(model, x)`, a (B, E) tensor.

    `call` defaults to `model(x)`; e.g. `lambda m, x: m.encode_image(x)` for open_clip or
    `lambda m, x: m.get_image_features(pixel_values=x)` for transformers (whose model output
    is unwrapped to its `pooler_output`).
    """

    def __init__(self, model: nn.Module, call: Callable[[nn.Module, torch.Tensor], object] | None = None):
        super().__init__()
        self.model, self.call = model, call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x) if self.call is None else self.call(self.model, x)
        return out if torch.is_tensor(out) else out.pooler_output


class ZeroShotHead(nn.Module):
    """x -> scale * normalize(image(x)) @ T^T: zero-shot logits the plain way (`engine.logits`;
    scale None is a linear probe's plain head image(x) @ T^T).

    `text` (K, E) holds the normalised text embeddings (or a probe's rows); `dtype`, when given, is the autocast
    dtype the image tower runs in (as the backend's trunk does); logits are float32 (float64 for a
    float64 tower and text, a precise reference).
    """

    def __init__(self, image: nn.Module, text: torch.Tensor, scale: float | None, dtype: torch.dtype | None = None):
        super().__init__()
        self.image, self.text, self.scale, self.dtype = image, text, scale, dtype

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding (B, E), unnormalised, in the autocast dtype."""
        with torch.autocast(x.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.image(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..core.engine import logits

        e = self.embed(x)
        return logits(e.to(torch.promote_types(e.dtype, torch.float32)), self.text, self.scale)


def tokens_to_grid(tokens: torch.Tensor, grid: Sequence[int], prefix: int,
                   batch_first: bool | None = True) -> torch.Tensor:
    """Hooked activations (B, prefix + h*w, D) (or (T, B, D) when not batch_first) -> (B, D, h, w), at least float32.

    `batch_first` None reads the layout from the shape: batch first unless only dim 0 holds the
    prefix + h*w tokens."""
    if batch_first is None:
        count = prefix + grid[0] * grid[1]
        batch_first = tokens.shape[1] == count or tokens.shape[0] != count
    t = (tokens if batch_first else tokens.transpose(0, 1))[:, prefix:]
    t = t.to(torch.promote_types(t.dtype, torch.float32))  # float64 stays float64 (precise references)
    return t.reshape(t.shape[0], grid[0], grid[1], t.shape[-1]).permute(0, 3, 1, 2)


def finer_cam(model: nn.Module, layer: nn.Module, pixels: torch.Tensor, targets, *, grid: Sequence[int],
              prefix: int, alpha: float = 1.0, base: str = "gradcam", alone: bool = False, signed: bool = False,
              batch_first: bool | None = True, on_grid: bool = True) -> np.ndarray:
    """pytorch-grad-cam FinerCAM maps, one per image: (B, h, w) on the patch grid (or at the input size).

    Args:
        model: pixels -> logits (B, K), e.g. a `ZeroShotHead`.
        layer: the module whose output is the target activation A (hooked for this call only).
        pixels: the model's input (B, 3, H, W).
        targets: one target per image: a (target index, reference indices) pair (a
            FinerWeightedTarget), or any pytorch-grad-cam target (a callable on the logits,
            e.g. our `Objective`); or one int, a target index for every image with FinerCAM's
            own choice of references.
        grid, prefix, batch_first: the token layout of `layer`'s output (`tokens_to_grid`).
        alpha: the weight of the references.
        base: the CAM under FinerCAM, a registered base name (`zsfinercam.core.bases`); its
            `reference` names the pytorch-grad-cam class (GradCAM, HiResCAM, LayerCAM).
        alone: run the base alone, without FinerCAM (a pair's references are then ignored).
        signed: return the base's cam as computed, before pytorch-grad-cam's ReLU and min-max
            (its min-max adds 1e-7 to the max, which is 1e-4 of a map whose largest value is 1e-3).
        on_grid: True leaves the maps on the (h, w) patch grid, so they compare with token maps
            directly; False resizes them to the input, as pytorch-grad-cam does by default.

    Each map is min-max normalised by pytorch-grad-cam (after its ReLU), unless `signed`.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam import FinerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget

    kept = {}

    class Base(getattr(pytorch_grad_cam, get_base(base).reference)):
        """The base, leaving the cam at the grid's size (grad-cam asks the base for it) and keeping it."""

        def get_target_width_height(self, input_tensor):
            return (grid[1], grid[0]) if on_grid else super().get_target_width_height(input_tensor)

        def get_cam_image(self, *args, **kwargs):
            kept["signed"] = super().get_cam_image(*args, **kwargs)
            return kept["signed"]

    def reshape(tokens):
        return tokens_to_grid(tokens, grid, prefix, batch_first)

    if isinstance(targets, int):
        if alone:
            raise ValueError("alone needs one target per image")
        call = {"target_idx": targets}
    else:
        pair = FinerWeightedTarget if not alone else (lambda t, refs, _: ClassifierOutputTarget(t))
        call = {"targets": [pair(t[0], list(t[1]), alpha) if isinstance(t, tuple) else t for t in targets]}
    with (Base(model, [layer], reshape) if alone else FinerCAM(model, [layer], reshape, base_method=Base)) as cam:
        maps = cam(pixels, **call) if alone else cam(pixels, alpha=alpha, **call)
    model.zero_grad(set_to_none=True)  # parameter gradients would stay allocated otherwise
    return kept["signed"] if signed else maps
