"""The public entry point: Localizer.from_pretrained(...).locate(image, concept)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import engine
from .backends import Backend, get_backend
from .contrast import DEFAULT_NUM_REFERENCES, nearest_by_logit
from .engine import ImageFeatures
from .errors import UsageError
from .images import ImageInput, load_image, to_pixels
from .objectives import DEFAULT_ALPHA, OBJECTIVES, Objective
from .result import LocateResult
from .text import ConceptEncoder, check_concepts, default_cache_dir

METHODS = ("finer", "gradcam")


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA was asked for but is not available here; use --device cpu or --device auto")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return dev


class Localizer:
    """Zero-shot concept localisation with Finer-CAM over a CLIP image tower."""

    def __init__(self, backend: Backend, *, cache_dir: str | Path | None = None, kernel: str = "auto"):
        """Wrap a loaded backend.

        Args:
            backend: a registered backend instance (see `from_pretrained`).
            cache_dir: where text embeddings are cached on disk; None keeps them in memory only.
            kernel: map kernel, "auto" (Triton on CUDA, torch elsewhere), "torch" or "triton".
        """
        self.backend = backend
        self.kernel = kernel
        self.text = ConceptEncoder(backend, Path(cache_dir) if cache_dir is not None else None)

    @classmethod
    def from_pretrained(
        cls,
        name: str = "toy",
        pretrained: str | None = None,
        *,
        model_config: str | None = None,
        device: str = "auto",
        backend: str = "open_clip",
        image_size: int | None = None,
        cache_dir: str | Path | None | bool = True,
        kernel: str = "auto",
    ) -> "Localizer":
        """Load a model by name: an open_clip architecture ("ViT-B-16") with a weights tag or file,
        "hf-hub:org/repo", "local-dir:/path", or "toy" (the embedded offline demo model).

        Args:
            pretrained: weights tag (e.g. "openai") or a .safetensors/.pt/.bin file; None = random weights.
            model_config: JSON file with an open_clip model config, for custom architectures.
            image_size: run the image tower at this size (position embeddings are resampled).
            cache_dir: text-embedding cache folder; True = $ZSFINERCAM_CACHE or ~/.cache/zsfinercam.
        """
        loaded = get_backend(backend).from_pretrained(
            name, pretrained=pretrained, model_config=model_config,
            device=resolve_device(device), image_size=image_size)
        folder = default_cache_dir() if cache_dir is True else (cache_dir or None)
        return cls(loaded, cache_dir=folder, kernel=kernel)

    @property
    def config(self):
        return self.backend.config

    def encode_text(self, concepts: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """Normalised, template-averaged concept embeddings (K, E)."""
        return self.text(concepts, self._templates(templates))

    def encode_image(self, images: ImageInput | Sequence[ImageInput]) -> ImageFeatures:
        """Run the trunk once; the returned features serve any number of later prompts."""
        many = images if isinstance(images, (list, tuple)) else [images]
        if not many:
            raise UsageError("no images given")
        loaded = [load_image(im) for im in many]
        arrays = [a for a, _ in loaded]
        cfg = self.config
        pixels = to_pixels(arrays, cfg.image_size, cfg.mean, cfg.std).to(self.backend.device)
        stream, target, embedding, cache = engine.encode(self.backend, pixels)
        return ImageFeatures(stream, target, embedding, cfg.grid_size, cfg.num_prefix_tokens, arrays,
                             [s for _, s in loaded], self._key(), cache=cache)

    def scores(self, image, concepts: Sequence[str], templates=None) -> list[dict[str, float]]:
        """Zero-shot logits {concept: z} for each image."""
        feats = self._features(image)
        names = check_concepts(concepts)
        z = engine.logits(feats.embedding, self.encode_text(names, templates), self.backend.logit_scale)
        return [{n: float(v) for n, v in zip(names, row)} for row in z.tolist()]

    def neighbors(self, concept: str, vocab: str | Sequence[str] | None = None, k: int = 5,
                  templates=None) -> list[tuple[str, float]]:
        """The k vocabulary entries nearest to `concept` by cosine similarity of their
        template-averaged text embeddings (image-independent), best first; the concept
        itself is left out. `vocab` defaults to the model's own classes."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UsageError(f"k must be a positive integer, got {k!r}")
        (target,) = check_concepts([concept])
        pool = self._vocab(vocab) if vocab is not None else list(self.config.default_vocab or [])
        entries = [e for e in pool if e != target]
        if not entries:
            raise UsageError("the vocabulary has no entry besides the concept itself; give one with --vocab")
        text = self.encode_text([target, *entries], templates)
        sims = (text[1:] @ text[0]).cpu()
        top = torch.sort(sims, descending=True, stable=True).indices[:k].tolist()
        return [(entries[i], float(sims[i])) for i in top]

    def locate(self, image, concept: str, vs: Sequence[str] | None = None, **kwargs) -> LocateResult:
        """The map of one concept in one image. See `locate_many` for the keyword arguments."""
        if not isinstance(concept, str):
            raise UsageError(f"expected one concept string, got {type(concept).__name__}; use locate_many")
        results = self.locate_many(image, [concept], vs=vs, **kwargs)
        return results[0] if isinstance(results[0], LocateResult) else results[0][0]

    def locate_many(
        self,
        images,
        concepts: Sequence[str],
        vs: Sequence[str] | None = None,
        *,
        vocab: str | Sequence[str] | None = None,
        alpha: float | None = None,
        method: str = "finer",
        objective: str = "weighted",
        templates: str | Sequence[str] | None = None,
        num_references: int = DEFAULT_NUM_REFERENCES,
    ) -> list:
        """Maps of several concepts in one image (or a batch): one trunk pass, one backward.

        Args:
            images: path, PIL image, uint8 array, ImageFeatures, or a list of the first three.
            concepts: the concepts to locate.
            vs: explicit references (the concepts contrasted against); default: chosen per
                image among `vocab` as the `num_references` closest logits to the target's.
            vocab: vocabulary name or file in prompts/, or a list; default: the model's own
                classes if it has them, else the other concepts of this call.
            alpha: contrast strength; default 1.0 (0.6 for the "mean" objective). 0 = Grad-CAM.
            method: "finer" or "gradcam" (plain Grad-CAM on the target logit).
            objective: "weighted" (official Finer-CAM), "mean" (paper) or "compare" (one reference).
            templates: template set name or file, or a list of format strings with one "{}".

        Returns:
            A list of LocateResult per concept; for a list of images (or ImageFeatures of
            several images), one such list per image.
        """
        feats = self._features(images)
        batched = isinstance(images, (list, tuple)) or len(feats) > 1
        names = check_concepts(concepts)
        if not names:
            raise UsageError("no concepts given")
        alpha = self._alpha(alpha, method, objective)
        refs, candidates = self._reference_pool(names, vs, vocab, method, alpha)
        table = list(dict.fromkeys(names + refs + candidates))
        index = {n: i for i, n in enumerate(table)}
        text = self.encode_text(table, templates)
        z = engine.logits(feats.embedding, text, self.backend.logit_scale).cpu()  # small; read many times
        objectives = [[self._objective(index[n], z[b], refs, candidates, index, alpha, method, objective,
                                       num_references) for n in names] for b in range(len(feats))]
        weights = engine.channel_weights(self.backend, feats, text, objectives,
                                         use_jacobian=isinstance(images, ImageFeatures))
        raw, norm = engine.token_maps(feats, weights, impl=self.kernel)
        contrast = "none" if method == "gradcam" or alpha == 0 else ("vs" if vs else "logits")
        shown = [index[c] for c in candidates]
        raw, norm, z = raw.cpu().numpy(), norm.cpu().numpy(), z.tolist()  # one device sync, not one per map
        out = [[self._result(feats, b, m, objectives[b][m], table, z[b], raw, norm, shown, method,
                             objective, alpha, contrast) for m in range(len(names))] for b in range(len(feats))]
        return out if batched else out[0]

    # helpers ---------------------------------------------------------------
    def _features(self, images) -> ImageFeatures:
        if isinstance(images, ImageFeatures):
            if images.model_key != self._key():
                raise UsageError("these ImageFeatures were made by another model; encode the image with this one")
            return images
        return self.encode_image(images)

    def _key(self) -> str:
        return f"{self.backend.name}:{self.config.name}:{id(self.backend)}"

    def _templates(self, templates) -> list[str]:
        from .vocab import DEFAULT_TEMPLATES, check_template, load_templates

        if templates is None:
            return list(self.config.default_templates or load_templates(DEFAULT_TEMPLATES))
        if isinstance(templates, (str, Path)):
            return load_templates(str(templates))
        return [check_template(t) for t in templates]

    @staticmethod
    def _alpha(alpha, method: str, objective: str) -> float:
        if method not in METHODS:
            raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
        if objective not in OBJECTIVES:
            raise UsageError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        if method == "gradcam":
            return 0.0
        alpha = DEFAULT_ALPHA[objective] if alpha is None else alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha < 0:
            raise UsageError(f"alpha must be a finite number >= 0, got {alpha!r}")
        return float(alpha)

    def _reference_pool(self, names, vs, vocab, method, alpha) -> tuple[list[str], list[str]]:
        """(explicit references, candidates for automatic references and scores)."""
        candidates = self._vocab(vocab)
        if vs is not None:
            vs = check_concepts([vs] if isinstance(vs, str) else list(vs))
            return vs, candidates
        if method == "gradcam" or alpha == 0:
            return [], candidates
        pool = candidates or list(self.config.default_vocab or []) or names
        if not [c for c in pool if c not in names] and len(names) < 2:
            raise UsageError("nothing to contrast with: give --vs CONCEPT, a --vocab, several concepts, "
                             "or use --method gradcam")
        return [], pool

    @staticmethod
    def _vocab(vocab) -> list[str]:
        if vocab is None:
            return []
        if isinstance(vocab, (str, Path)):
            from .vocab import load_vocab

            return load_vocab(str(vocab))
        return check_concepts(list(vocab))

    @staticmethod
    def _objective(t, z_b, refs, candidates, index, alpha, method, objective, k) -> Objective:
        if method == "gradcam" or alpha == 0:
            return Objective(t, (), 0.0, "weighted")
        chosen = tuple(index[r] for r in refs if index[r] != t) if refs else \
            nearest_by_logit(z_b, t, [index[c] for c in candidates], 1 if objective == "compare" else k)
        if not chosen:
            raise UsageError(f"no reference left for {list(index)[t]!r} after removing the concept itself")
        if objective == "compare":
            chosen = chosen[:1]
        return Objective(t, chosen, alpha, objective)

    def _result(self, feats, b, m, obj, table, z_b, raw, norm, vocab_idx, method, objective, alpha, contrast):
        image = feats.images[b]
        shown = [obj.target, *obj.references, *vocab_idx]
        return LocateResult(
            concept=table[obj.target], references=tuple(table[r] for r in obj.references),
            scores={table[i]: z_b[i] for i in dict.fromkeys(shown)},
            token_map=raw[b, m], norm_map=norm[b, m],
            image=image, method=method, objective=objective if method == "finer" else "gradcam", alpha=alpha,
            contrast=contrast, source=feats.sources[b])
