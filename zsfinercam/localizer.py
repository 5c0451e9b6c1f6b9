"""The public entry point: Localizer.from_pretrained(...).locate(image, concept)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .core import engine
from .core.bases import get_base
from .core.kernel_choice import check_kernel
from .backends import Backend, get_backend
from .concepts.contrast import make_plans, nearest_by_text, part_table_of, pick
from .core.engine import ImageFeatures
from .errors import UsageError
from .io.images import DEFAULT_MAX_PIXELS, ImageInput, check_max_pixels, load_image, to_pixels
from .core.objectives import Objective
from .options import LocateOptions, check_concepts, choose_strategy
from .result import LOGIT, LocateResult
from .concepts.text import ConceptEncoder, default_cache_dir, vocabulary_notice
from .zoom import zoomed_maps

if TYPE_CHECKING:
    from .compare import Comparison

__all__ = ["Localizer", "resolve_device"]


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

    def __init__(self, backend: Backend, *, cache_dir: str | Path | None = None, kernel: str = "auto",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        """Wrap a loaded backend.

        Args:
            backend: a registered backend instance (see `from_pretrained`).
            cache_dir: where text embeddings are cached on disk; None keeps them in memory only.
            kernel: how maps are computed, for every CAM base: "auto" (Triton on CUDA where it
                imports, torch elsewhere), "torch" or "triton" (CUDA, or on CPU Triton's
                interpreter under TRITON_INTERPRET=1, for testing; else a UsageError saying why).
            max_pixels: image files with more pixels (width x height) are refused before
                decoding (decompression bombs); None = no limit.
        """
        self.backend = backend
        self.kernel = check_kernel(kernel, backend.device)
        self.max_pixels = check_max_pixels(max_pixels)
        self.text = ConceptEncoder(backend, Path(cache_dir) if cache_dir is not None else None)
        self.load_args: dict | None = None  # from_pretrained's arguments: how other processes load it

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
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> "Localizer":
        """Load a model by name: an open_clip architecture ("ViT-B-16") with a weights tag or file,
        "hf-hub:org/repo", "local-dir:/path", or "toy" (the embedded offline demo model).

        Args:
            pretrained: weights tag (e.g. "openai") or a .safetensors/.pt/.bin file; None = random weights.
            model_config: JSON file with an open_clip model config, for custom architectures.
            image_size: run the image tower at this size (position embeddings are resampled).
            cache_dir: text-embedding cache folder; True = $ZSFINERCAM_CACHE or ~/.cache/zsfinercam.
            kernel, max_pixels: see `__init__`.
        """
        max_pixels = check_max_pixels(max_pixels)  # before the (slow) load
        check_kernel(kernel, resolve_device(device))
        if image_size is not None and (isinstance(image_size, bool)
                                       or not isinstance(image_size, (int, np.integer))):
            raise UsageError(f"image_size must be a whole number of pixels, got {image_size!r}")
        loaded = get_backend(backend).from_pretrained(
            name, pretrained=pretrained, model_config=model_config,
            device=resolve_device(device), image_size=image_size)
        folder = default_cache_dir() if cache_dir is True else (cache_dir or None)
        loc = cls(loaded, cache_dir=folder, kernel=kernel, max_pixels=max_pixels)
        loc.load_args = {"name": name, "pretrained": pretrained, "model_config": model_config, "device": device,
                         "backend": backend, "image_size": image_size, "cache_dir": folder, "kernel": kernel,
                         "max_pixels": max_pixels}
        return loc

    @classmethod
    def from_classifier(cls, backbone: str, classifier: str | Path, classes: str | Path, *,
                        pretrained: str | None = None, model_config: str | None = None, device: str = "auto",
                        image_size: int | None = None, kernel: str = "auto",
                        max_pixels: int | None = DEFAULT_MAX_PIXELS) -> "Localizer":
        """A trained linear classifier over an image tower (the Finer-CAM paper's setting).

        Args:
            backbone: an open_clip model name (as for `from_pretrained`) or "timm:NAME" (a timm ViT,
                e.g. "timm:vit_base_patch14_dinov2"; pooled as the official code: mean of the
                final-normed patch tokens).
            classifier: `nn.Linear` state dict (.pth weights-only or .safetensors); the official
                Finer-CAM `classifier_*.pth` files load as they are.
            classes: class names, one per line in row order (or a JSON list).
            pretrained: the backbone's weights (tag or file); for timm, None = timm's hub weights.
            model_config: open_clip config JSON, or for timm a JSON of create_model overrides.

        Concepts are class names; references are chosen among the classes by logits, as in
        the paper. See `zsfinercam.backends.probe_files` and `zsfinercam.backends.probe`.
        """
        from .backends.probe_files import load_probe

        max_pixels = check_max_pixels(max_pixels)
        check_kernel(kernel, resolve_device(device))
        probe = load_probe(backbone, classifier, classes, pretrained=pretrained, model_config=model_config,
                           device=resolve_device(device), image_size=image_size)
        return cls(probe, cache_dir=None, kernel=kernel, max_pixels=max_pixels)

    def __repr__(self) -> str:
        cfg = self.config
        return (f"Localizer({cfg.name!r}, backend {self.backend.name!r}, image {cfg.image_size[1]}x{cfg.image_size[0]}, "
                f"device {self.backend.device})")

    @property
    def config(self):
        return self.backend.config

    @property
    def model_key(self) -> str:
        """Names this loaded model (backend, model, instance): ImageFeatures carry it, so features
        made by one model are never used with another."""
        return f"{self.backend.name}:{self.config.name}:{id(self.backend)}"

    def head(self, concepts: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """Rows of the linear head for `concepts`: encoded prompts, or a linear probe's classifier rows."""
        rows = self.backend.head_rows(check_concepts(concepts), templates)
        return self.encode_text(concepts, templates) if rows is None else rows

    def encode_text(self, concepts: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """Normalised, template-averaged concept embeddings (K, E)."""
        return self.text(concepts, self._templates(templates))

    def encode_image(self, images: ImageInput | Sequence[ImageInput]) -> ImageFeatures:
        """Run the trunk once; the returned features serve any number of later prompts."""
        many = images if isinstance(images, (list, tuple)) else [images]
        if not many:
            raise UsageError("no images given")
        loaded = [load_image(im, max_pixels=self.max_pixels) for im in many]
        arrays = [a for a, _ in loaded]
        stream, target, embedding, cache = engine.encode(self.backend, self.pixels(arrays))
        cfg = self.config
        return ImageFeatures(stream, target, embedding, cfg.grid_size, cfg.num_prefix_tokens, arrays,
                             [s for _, s in loaded], self.model_key, cache=cache,
                             from_list=isinstance(images, (list, tuple)))

    def pixels(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """The model's input (B, 3, H, W) on its device for RGB uint8 arrays (`io.images.to_pixels`
        at the config's size, mean and std): the one pixel pipeline of every caller."""
        cfg = self.config
        return to_pixels(list(arrays), cfg.image_size, cfg.mean, cfg.std).to(self.backend.device)

    def scores(self, image, concepts: Sequence[str], templates=None) -> list[dict[str, float]]:
        """Zero-shot logits {concept: z} for each image."""
        feats = self._features(image)
        names = check_concepts(concepts)
        z = self._logits(feats, self.head(names, templates))
        return [{n: float(v) for n, v in zip(names, row)} for row in z.tolist()]

    def neighbors(self, concept: str, vocab: str | Sequence[str] | None = None, k: int = 5,
                  templates=None) -> list[tuple[str, float]]:
        """The k vocabulary entries nearest to `concept` by cosine similarity of their
        template-averaged text embeddings (image-independent), best first; the concept
        itself (and any entry with its very embedding, e.g. other case) is left out. `vocab`
        defaults to the model's own classes."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UsageError(f"k must be a positive integer, got {k!r}")
        (target,) = check_concepts([concept])
        pool = self._vocab(vocab) if vocab is not None else list(self.config.default_vocab or [])
        entries = [e for e in pool if e != target]
        if not entries:
            raise UsageError("the vocabulary has no entry besides the concept itself; give one with --vocab")
        text = self.encode_text([target, *entries], templates).cpu()
        sims = text[1:] @ text[0]
        return [(entries[i - 1], float(sims[i - 1])) for i in nearest_by_text(text, 0, range(1, len(text)), k)]

    def compare(self, image, concepts: Sequence[str], options: LocateOptions | None = None,
                **keywords) -> "Comparison":
        """Maps of the CAM base alone and of Finer-CAM for several concepts in one image, for a
        side-by-side grid.

        The trunk runs once (or not at all for ImageFeatures, which then reuse the image's
        Jacobian, so each extra concept costs text encoding and small matrix products).
        `options` (or keywords, as for `locate_many`) shape the Finer-CAM row; the base-alone
        row is `options.base_alone()` (same templates and base, no references).
        """
        from .compare import Comparison

        if "method" in keywords or (options is not None and options.method != "finer"):
            raise UsageError("compare always shows both methods; drop method=")
        options = self.options(options, **keywords)
        feats = self._features(image)
        if len(feats) != 1:
            raise UsageError(f"compare takes one image, got {len(feats)}")
        use_jacobian = self._use_jacobian(image, feats, options.base)
        finer = self._maps(feats, concepts, options, use_jacobian)[0]
        alone = self._maps(feats, concepts, options.base_alone(), use_jacobian)[0]
        return Comparison(base_alone=alone, finer=finer)

    def locate(self, image, concept: str, vs: Sequence[str] | None = None, options: LocateOptions | None = None,
               **keywords) -> LocateResult:
        """The map of one concept in one image (one image only). See `locate_many` for the options."""
        if not isinstance(concept, str):
            raise UsageError(f"expected one concept string, got {type(concept).__name__}; use locate_many")
        if vs is not None:
            keywords["vs"] = vs
        options = self.options(options, **keywords)
        feats = self._features(image)
        if len(feats) != 1:
            raise UsageError(f"locate takes one image, got {len(feats)}; use locate_many")
        return self._maps(feats, [concept], options, self._use_jacobian(image, feats, options.base))[0][0]

    def locate_many(self, images, concepts: Sequence[str], options: LocateOptions | None = None,
                    **keywords) -> list:
        """Maps of several concepts in one image (or a batch): one trunk pass, one backward.

        Args:
            images: one image (path, PIL image, uint8 array), a list or tuple of them, or the
                ImageFeatures `encode_image` made of either.
            concepts: the concepts to locate.
            options: a `LocateOptions`; or give its fields as keywords (vs=, vocab=, alpha=,
                method=, objective=, base=, templates=, num_references=, contrast=,
                category=, parts=, zoom=, zoom_on=, faithfulness=; see `LocateOptions`), not both.
                With zoom=True each map is made in a window on the subject (`zsfinercam.zoom`).

        Returns:
            The shape follows the input. One image, or ImageFeatures of one image given
            alone: a list of LocateResult, one per concept. A list or tuple of images (even
            of one), or ImageFeatures made from one: one such list per image.

        Raises:
            UsageError: bad options, both `options` and keywords, or bad concepts.
        """
        options = self.options(options, **keywords)
        feats = self._features(images)
        out = self._maps(feats, concepts, options, self._use_jacobian(images, feats, options.base))
        return out if feats.from_list or len(feats) > 1 else out[0]

    # helpers ---------------------------------------------------------------
    def _maps(self, feats: ImageFeatures, concepts, options: LocateOptions,
              use_jacobian: bool) -> list[list[LocateResult]]:
        """locate_many on encoded features: one list of results per image."""
        names = check_concepts(concepts)
        typed = [*names, *(options.vs or ()), *([options.category] if options.category else [])]
        if notice := vocabulary_notice(self.config.known_words, typed):
            warnings.warn(notice)  # at this line: the default filter shows one message once per process
        if options.zoom:
            return zoomed_maps(self, feats, names, options)
        plans, candidates = self._plans(names, options)
        table = list(dict.fromkeys([*names, *(c for p in plans for c in p.concepts), *candidates]))
        index = {n: i for i, n in enumerate(table)}
        text = self.head(table, options.templates)
        z = self._logits(feats, text).cpu()
        objectives = [[self._objective(index[n], z[b], plan, index, options)
                       for n, plan in zip(names, plans)] for b in range(len(feats))]
        raw, norm = engine.maps(self.backend, feats, text, objectives, base=options.base,
                                use_jacobian=use_jacobian, impl=self.kernel)
        shown = [index[c] for c in candidates]
        raw, norm, z = raw.cpu().numpy(), norm.cpu().numpy(), z.tolist()  # one device sync, not one per map
        faith = self._faithfulness(feats, text, objectives, raw, options.faithfulness)
        return [[self._result(feats, b, objectives[b][m], table, z[b], (raw[b, m], norm[b, m]), shown, options,
                              plans[m].strategy, faith[b][m] if faith else None) for m in range(len(names))]
                for b in range(len(feats))]

    def _faithfulness(self, feats: ImageFeatures, text, objectives, raw: np.ndarray, mode) -> list | None:
        """Per image and map its `Faithfulness` (`core.removal`); None when `mode` (options.faithfulness) is off."""
        if not mode:
            return None
        from .core import faithfulness, removal

        return removal.faithfulness(self.backend, self.pixels(feats.images), text, objectives,
                                    raw.reshape(*raw.shape[:2], -1), faithfulness.mode_of(mode))

    def _features(self, images) -> ImageFeatures:
        if isinstance(images, ImageFeatures):
            if images.model_key != self.model_key:
                raise UsageError("these ImageFeatures were made by another model; encode the image with this one")
            return images
        return self.encode_image(images)

    def _logits(self, feats: ImageFeatures, head: torch.Tensor) -> torch.Tensor:
        """The model's own logits (B, K), its bias (SigLIP) included."""
        return engine.logits(feats.embedding, head, self.backend.logit_scale) + self.config.logit_bias

    def options(self, options: LocateOptions | None = None, **keywords) -> LocateOptions:
        """The options a locate call with these arguments uses, fully resolved: built once (an
        options object or its fields as keywords; alpha resolved there), the default base resolved
        for this backend (`LocateOptions.resolved`). Everything below this façade gets these."""
        return LocateOptions.build(options, **keywords).resolved(self.backend.token_gradients)

    def _use_jacobian(self, images, feats: ImageFeatures, base: str) -> bool:
        """Cached features reuse the per-image Jacobian of `base` (the shift's for Grad-CAM, the
        attention output's, `output_jacobian`, for the element-wise bases), built on first use;
        not on towers whose Jacobian costs a last block per embedding row (`jacobian_chunk`),
        unless it exists."""
        if not isinstance(images, ImageFeatures):
            return False
        built = feats.output_jacobian if get_base(base).token_gradients else feats.jacobian
        return built is not None or not self.backend.jacobian_chunk

    def _templates(self, templates) -> list[str]:
        from .concepts.vocab import DEFAULT_TEMPLATES, check_template, load_templates

        if templates is None:
            return list(self.config.default_templates or load_templates(DEFAULT_TEMPLATES))
        if isinstance(templates, (str, Path)):
            return load_templates(str(templates))
        return [check_template(t) for t in templates]

    def _plans(self, names, options: LocateOptions):
        """(one reference plan per concept, vocabulary entries whose scores are reported)."""
        category, vocab, parts = options.category, options.vocab, options.parts
        if category is not None:
            (category,) = check_concepts([category])
        candidates = self._vocab(vocab)
        vs = check_concepts(list(options.vs)) if options.vs is not None else None
        strategy = choose_strategy(options.contrast, vs, parts, options.alpha == 0)
        if category is not None and strategy != "generic":
            warnings.warn("category is used only by contrast 'generic' (--contrast generic); ignored", stacklevel=4)
        pool = candidates or list(self.config.default_vocab or []) or names
        if strategy in ("logits", "text") and not [c for c in pool if c not in names] and len(names) < 2:
            where = "the vocabulary holds nothing besides the concept" if candidates else "nothing to contrast with"
            raise UsageError(f"{where}: give references (vs= / --vs), a larger vocabulary (vocab= / --vocab), "
                             "several concepts, or map the base alone (method='base' / --method base)")
        if strategy == "generic" and category is None and isinstance(vocab, str):
            from .concepts.vocab import load_category

            category = load_category(vocab)
        part_table = part_table_of(dict(parts) if isinstance(parts, tuple) else parts) \
            if strategy == "parts" else None
        plans = make_plans(strategy, names, pool=pool, vs=vs or (), category=category, parts=part_table,
                           k=options.num_references,
                           embed=lambda texts: self.encode_text(list(texts), options.templates))
        return plans, candidates

    @staticmethod
    def _vocab(vocab) -> list[str]:
        if vocab is None:
            return []
        if isinstance(vocab, (str, Path)):
            from .concepts.vocab import load_vocab

            return load_vocab(str(vocab))
        return check_concepts(list(vocab), allow_empty=True)

    @staticmethod
    def _objective(concept: int, z_b, plan, index, options: LocateOptions) -> Objective:
        if plan.strategy == "none":
            return Objective(concept, (), 0.0, "weighted")
        single = options.objective == "compare"
        chosen = pick(plan, z_b, concept, index, 1 if single and not plan.fixed else options.num_references)
        if not chosen:
            raise UsageError(f"no reference left for {list(index)[concept]!r}: the candidates are the concept "
                             "itself (up to case and spacing); give other references (vs= / --vs) or a vocabulary")
        return Objective(concept, chosen[:1] if single else chosen, options.alpha, options.objective)

    @staticmethod
    def _result(feats, b, obj, table, z_b, maps, vocab_idx, options: LocateOptions, contrast,
                faithfulness=None) -> LocateResult:
        """LocateResult of objective `obj` on image b; `maps` = its (raw, normalised) token maps."""
        shown = [obj.concept, *obj.references, *vocab_idx]
        return LocateResult(
            concept=table[obj.concept], references=tuple(table[r] for r in obj.references),
            scores={table[i]: z_b[i] for i in dict.fromkeys(shown)},
            token_map=maps[0], norm_map=maps[1], image=feats.images[b], method=options.method,
            objective=options.objective if options.method == "finer" else LOGIT, alpha=options.alpha,
            contrast=contrast, source=feats.sources[b], base=options.base, templates=options.templates,
            faithfulness=faithfulness)
