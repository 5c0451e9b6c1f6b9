"""The model card every other module reads: one frozen object, so CLI and API agree."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelConfig:
    """What the engine needs to know about a loaded image-text model."""

    name: str  # architecture or identifier as the user gave it
    backend: str  # registry name of the backend that loaded it
    pretrained: str | None  # weights tag or file; None means random initialisation
    image_size: tuple[int, int]  # (H, W) the image tower runs at (may differ from native)
    native_image_size: tuple[int, int]  # (H, W) the position embedding was trained at
    patch_size: tuple[int, int]  # (h, w) pixels per patch token
    num_prefix_tokens: int  # tokens before the patch grid (CLS, registers)
    width: int  # channels D of the target activation
    embed_dim: int  # size E of the joint image-text embedding
    logit_scale: float  # s in z = s * cos(image, text)
    mean: tuple[float, float, float]  # per-channel normalisation of [0, 1] pixels
    std: tuple[float, float, float]
    target_layer: str  # module path of the target activation, e.g. "visual.transformer.resblocks.11.ln_1"
    pooling: str  # how the image embedding is pooled: "cls" (class token), "map" (attention-pooling head), "avg"
    context_length: int  # text tokens per prompt
    default_templates: tuple[str, ...] | None = None  # prompt templates the weights were trained with
    default_vocab: tuple[str, ...] | None = None  # concepts to contrast with when none are given
    # Every word the text tower was trained on, for a closed-vocabulary demo model (the toy's
    # synthetic-bird captions); None: an open vocabulary (a real CLIP).
    known_words: tuple[str, ...] | None = None
    # b in the model's own logits s * cos + b (SigLIP). The same for every concept, so it moves no
    # map and no softmax over references; reported scores include it.
    logit_bias: float = 0.0
    cosine_head: bool = True  # z = s * cos(e, T); False for a trained linear probe: z = e @ T^T (scale 1)

    @property
    def normalize(self) -> bool:
        """Deprecated name of `cosine_head` (kept for readers; "normalize" also names L2 and min-max)."""
        return self.cosine_head

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (h, w) at `image_size`."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        h, w = self.grid_size
        return h * w


def as_pair(value) -> tuple[int, int]:
    """(a, b) from a number (square) or a pair."""
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def run_size(native, patch, image_size) -> tuple[int, int]:
    """(H, W) an image tower runs at: its `native` size, or `image_size` (one side, or H and W) when given.

    Raises:
        UsageError: the size is not a positive multiple of the `patch` size.
    """
    size, patch = as_pair(native if image_size is None else image_size), as_pair(patch)
    if size[0] < patch[0] or size[1] < patch[1] or size[0] % patch[0] or size[1] % patch[1]:
        lo = max(patch[0], size[0] // patch[0] * patch[0])
        raise UsageError(f"image size {size[0]} must be a positive multiple of the patch size {patch[0]} "
                         f"(try {lo} or {lo + patch[0]})")
    return size
