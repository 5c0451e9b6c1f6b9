"""What shapes a map: one frozen, validated `LocateOptions`, built once and passed down whole.

Everything a caller chooses about a map besides the image and the concepts lives here:
the references (vs, vocab, contrast, category, parts, num_references), the objective and
its strength (method, objective, alpha), the CAM base and the prompt templates. It is
built from Python keywords (`Localizer.locate_many(..., alpha=0.5)`), from CLI flags
(`cli.flags.locate_options`), or from a batch's run.json (`from_json`), and validated
in `__post_init__` only: this module is the one place that says which values are allowed.

Importing it loads neither torch, numpy nor cv2, so a CLI, a web form or a job scheduler
can build and check options before any model is loaded.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .core.bases.registry import list_bases
from .errors import UsageError

METHODS = ("finer", "base")  # how a map is computed: Finer-CAM, or the CAM base alone on the concept's logit
EVAL_METHODS = (*METHODS, "random", "randomized")  # what `zsfinercam eval` scores: METHODS and two sanity baselines
OBJECTIVES = ("weighted", "mean", "compare")  # Finer-CAM objectives (see zsfinercam.core.objectives)
DEFAULT_ALPHA = {"weighted": 1.0, "mean": 0.6, "compare": 1.0}  # contrast strength when none is given
STRATEGIES = ("logits", "text", "vs", "generic", "parts")  # how references are chosen (see zsfinercam.concepts.contrast)
BASES = tuple(list_bases())  # how a gradient becomes a map: the CAM base registry (zsfinercam.core.bases)
# base=None resolves (`LocateOptions.resolved`) to HiResCAM, the best on the synthetic benchmark (README,
# "Evaluation"), on every backend that gives per-token gradients (all built-ins); else to FALLBACK_BASE
DEFAULT_BASE = "hirescam"
FALLBACK_BASE = "gradcam"  # the base of a backend that gives only channel weights (no per-token gradients)
FAITHFULNESS = (False, True, "deletion")  # per-map faithfulness: off, deletion + insertion, deletion alone
FAITHFULNESS_NAMES = {"off": False, "both": True, "deletion": "deletion"}  # as a flag or a page names them
DEFAULT_NUM_REFERENCES = 3  # references per pool ("logits", "parts") and neighbours ("text")
DEFAULT_MAX_PIXELS = 89_478_485  # image files with more pixels (w x h) are refused: PIL's own warning level

Texts = tuple[str, ...]
Parts = tuple[tuple[str, Texts], ...]  # ((part, (attribute, ...)), ...): a part vocabulary, in order


class OptionError(UsageError):
    """A bad option value; `field` names the option (the CLI maps it to its flag)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_choice(field: str, value: Any, choices: Sequence[str]) -> str:
    """`value` if it is one of `choices`, else an OptionError naming them."""
    if not isinstance(value, str) or value not in choices:
        raise OptionError(field, f"unknown {field} {value!r}; choose one of: {', '.join(choices)}")
    return value


def check_alpha(alpha: Any) -> float:
    """A contrast strength as float: a finite real number >= 0 (not a bool)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha < 0:
        raise OptionError("alpha", f"alpha must be a finite number >= 0, got {alpha!r}")
    return float(alpha)


@dataclass(frozen=True)
class LocateOptions:
    """Everything that shapes a map, validated; hashable, comparable and JSON round-trippable.

    Attributes:
        vs: explicit references (the concepts contrasted against); None (or empty) = choose
            them per image (by default the `num_references` vocabulary entries whose logits
            are closest to the concept's). A single string is one reference.
        vocab: vocabulary name or file (see `zsfinercam prompts`), or the entries themselves;
            None = the model's own classes if it has them, else the other concepts of the call.
        alpha: contrast strength, always a float once built: None gives
            DEFAULT_ALPHA[objective], and method "base" gives 0.0 (0 = the base alone).
            `replace` keeps it as resolved; pass alpha=None to resolve it again.
        method: one of METHODS: "finer" (Finer-CAM) or "base" (the CAM base alone, on the
            concept's logit: no references).
        objective: one of OBJECTIVES: "weighted" (official Finer-CAM), "mean" (the paper's)
            or "compare" (one reference; the name of an objective, not of `Localizer.compare`).
        base: one of BASES, how the gradient becomes a map (passed to `engine.maps`):
            "gradcam" (channel weights = token-mean gradient), "hirescam" (gradient x
            activation per token, summed over channels) or "layercam" (ReLU(gradient) x
            activation); None (default): resolved once by `resolved` (`Localizer.options`)
            to DEFAULT_BASE ("hirescam") where the backend gives per-token gradients
            (`Backend.token_gradients`, every built-in backend), else FALLBACK_BASE.
        templates: template set name or file, or format strings each with one "{}";
            None = the model's own, else the default set.
        num_references: references picked per pool by "logits" and "parts", and the
            neighbours taken by "text"; a positive integer.
        contrast: one of STRATEGIES, or None: "vs" when `vs` is given, "parts" when `parts`
            is, else "logits" (the strategy's own consistency is checked when maps are made).
        category: what the concepts are kinds of ("bird"), for contrast "generic";
            None = the vocabulary file's category, if it names one.
        parts: part vocabulary for attribute mode, a name or file, or {part: [attributes]}
            (kept as a tuple of (part, attributes) pairs so the options stay hashable): each
            concept is contrasted with the other attributes of its part and with the same
            trait on the other parts.
        zoom: find the subject first and map a square window around it at the model's input
            size, for small subjects in large photos (`zsfinercam.zoom`).
        zoom_on: the text whose zero-shot logit finds the window (e.g. "bird"), one window for
            every concept; None = each concept's own. Needs `zoom`.
        faithfulness: one of FAITHFULNESS: also score how much each map's own objective rests on
            its top patch tokens (`zsfinercam.core.faithfulness`): True with deletion and
            insertion, "deletion" with deletion alone (half the cost), False (default) not at all.
    """

    vs: Texts | None = None
    vocab: str | Texts | None = None
    alpha: float | None = None
    method: str = "finer"
    objective: str = "weighted"
    base: str | None = None
    templates: str | Texts | None = None
    num_references: int = DEFAULT_NUM_REFERENCES
    contrast: str | None = None
    category: str | None = None
    parts: str | Parts | None = None
    zoom: bool = False
    zoom_on: str | None = None
    faithfulness: bool | str = False

    def __post_init__(self) -> None:
        if not any(self.faithfulness is v or (isinstance(v, str) and self.faithfulness == v) for v in FAITHFULNESS):
            raise OptionError("faithfulness", f"faithfulness must be False, True or 'deletion', "
                                              f"got {self.faithfulness!r}")
        check_choice("method", self.method, METHODS)
        check_choice("objective", self.objective, OBJECTIVES)
        if self.base is not None:
            check_choice("base", self.base, list_bases())  # bases registered after import count too
        if self.contrast is not None:
            check_choice("contrast", self.contrast, STRATEGIES)
        k = self.num_references
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise OptionError("num_references", f"num_references must be a positive integer, got {k!r}")
        if self.category is not None and not isinstance(self.category, str):
            raise OptionError("category", f"category must be one concept string, got {self.category!r}")
        _check_zoom(self.zoom, self.zoom_on)
        alpha = DEFAULT_ALPHA[self.objective] if self.alpha is None else self.alpha
        alpha = check_alpha(alpha)  # checked even for the base alone: a NaN is a mistake either way
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen)
        set_("alpha", 0.0 if self.method == "base" else alpha)
        set_("num_references", int(k))
        set_("vs", _texts("vs", [self.vs] if isinstance(self.vs, str) else self.vs) or None)
        set_("vocab", _name_or_texts("vocab", self.vocab))
        set_("templates", _name_or_texts("templates", self.templates))
        set_("parts", _parts(self.parts))
        set_("zoom_on", None if self.zoom_on is None else self.zoom_on.strip())

    @classmethod
    def build(cls, options: "LocateOptions | None" = None, **keywords) -> "LocateOptions":
        """`options` as given, or options from `keywords`; giving both is a UsageError."""
        if options is not None:
            if not isinstance(options, LocateOptions):
                raise UsageError(f"options must be a LocateOptions, got {type(options).__name__}")
            if keywords:
                raise UsageError(f"give either options= or keyword arguments ({', '.join(sorted(keywords))}), "
                                 "not both; use options.replace(...) to change some")
            return options
        unknown = sorted(set(keywords) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UsageError(f"unknown option {unknown[0]!r}; choose from: "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**keywords)

    def replace(self, **changes) -> "LocateOptions":
        """A copy with `changes` applied and validated (alpha stays as resolved unless changed)."""
        return LocateOptions.build(**{**self.to_json(), **changes})

    def base_alone(self) -> "LocateOptions":
        """The CAM base alone (method "base"): the same base, templates and reference count, no references."""
        return self.replace(method="base", alpha=None, vs=None, vocab=None, contrast=None,
                            category=None, parts=None)

    def resolved(self, token_gradients: bool) -> "LocateOptions":
        """These options with the default base resolved for a backend: DEFAULT_BASE where it gives
        per-token gradients (`Backend.token_gradients`), else FALLBACK_BASE; a given base is kept.
        (alpha is resolved when the options are built.)"""
        if self.base is not None:
            return self
        return self.replace(base=DEFAULT_BASE if token_gradients else FALLBACK_BASE)

    def to_json(self) -> dict[str, Any]:
        """A plain dict of JSON types (lists for sequences, an object for a parts table)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("vs", "vocab", "templates"):
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        if isinstance(self.parts, tuple):
            out["parts"] = {part: list(entries) for part, entries in self.parts}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "LocateOptions":
        """Options from `to_json`'s dict (e.g. a batch's run.json); unknown keys are a UsageError."""
        if not isinstance(data, Mapping):
            raise UsageError(f"options must be a JSON object, got {type(data).__name__}")
        return cls.build(**data)


def _check_zoom(zoom: Any, zoom_on: Any) -> None:
    if not isinstance(zoom, bool):
        raise OptionError("zoom", f"zoom must be True or False, got {zoom!r}")
    if zoom_on is None:
        return
    if not isinstance(zoom_on, str) or not zoom_on.strip():
        raise OptionError("zoom_on", f"zoom_on must be a non-blank text such as \"bird\", got {zoom_on!r}")
    if not zoom:
        raise OptionError("zoom_on", "zoom_on finds the zoom window: it needs zoom=True (--zoom)")


def _texts(field: str, values) -> Texts:
    if values is None:
        return ()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise OptionError(field, f"{field} must be a list of strings, got {type(values).__name__}")
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise OptionError(field, f"{field} must hold strings, got {bad[0]!r}")
    return tuple(values)


def _name_or_texts(field: str, value) -> str | Texts | None:
    """A name or file (str, os.PathLike -> str), or a sequence of strings -> tuple."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return _texts(field, value)


def _parts(value) -> str | Parts | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    pairs = value.items() if isinstance(value, Mapping) else value
    try:
        table = tuple((part, _texts("parts", entries)) for part, entries in pairs)
    except (TypeError, ValueError):
        table = None
    if table is None or not all(isinstance(part, str) for part, _ in table):
        raise OptionError("parts", "parts must be a part vocabulary name or file, or a dict {part: [attributes]}")
    return table


def choose_strategy(contrast: str | None, vs, parts, plain: bool) -> str:
    """The strategy named (one of STRATEGIES, checked by LocateOptions), or implied by `vs` /
    `parts`; "none" for the base alone (`plain`: alpha 0)."""
    implied = "vs" if vs is not None else ("parts" if parts is not None else None)
    if vs is not None and parts is not None:
        raise UsageError("vs (--vs) and parts (--parts) choose references in different ways; give one of them")
    if contrast is not None and implied is not None and contrast != implied:
        raise UsageError(f"contrast {contrast!r} (--contrast {contrast}) conflicts with {implied} (--{implied}); "
                         "drop one of them")
    if contrast in ("vs", "parts") and implied is None:
        raise UsageError(f"contrast {contrast!r} needs {contrast}= (--{contrast})")
    if plain:
        return "none"
    return contrast or implied or "logits"


NO_CONCEPTS = "no concepts given; give at least one, e.g. \"red-tailed hawk\""


def check_concepts(concepts: Sequence[str], *, allow_empty: bool = False) -> list[str]:
    """Concepts as a list of non-blank strings (surrounding space stripped): the one check of
    concepts, wherever they come from (API, CLI, the lab, references, vocabularies).

    Raises:
        UsageError: not a list of strings, a blank one, or none (unless `allow_empty`).
    """
    if isinstance(concepts, str) or not isinstance(concepts, Sequence):
        raise UsageError(f"expected a list of concept strings, got {type(concepts).__name__}")
    if not concepts and not allow_empty:
        raise UsageError(NO_CONCEPTS)
    out = []
    for c in concepts:
        if not isinstance(c, str):
            raise UsageError(f"expected concept strings, got {type(c).__name__}: {c!r}")
        if not c.strip():
            raise UsageError("a concept is empty or blank; give some text, e.g. \"red-tailed hawk\"")
        out.append(c.strip())
    return out


def unique_concepts(concepts: Sequence[str]) -> list[str]:
    """Concepts stripped and checked, each kept once in first-seen order (with a warning
    naming the duplicates): one map, one set of files per concept."""
    names = check_concepts(list(concepts))
    kept = list(dict.fromkeys(names))
    if len(kept) < len(names):
        dups = [n for n in kept if names.count(n) > 1]
        warnings.warn(f"concept(s) given more than once, each mapped once: {', '.join(map(repr, dups))}",
                      stacklevel=2)
    return kept
