"""Prompts -> templates -> text tower -> concept embeddings T (the zero-shot head).

Each concept is put through every template, encoded, L2-normalised, averaged over
templates and re-normalised (CLIP's zero-shot classifier). Embeddings are cached in
memory and, when a cache folder is given, on disk, keyed by the text tower's weights
and the template set, so a repeated prompt costs nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..backends import Backend
from ..errors import UsageError
from ..options import check_concepts
from ..io.progress import MANY_PROMPTS, bar, note

TEXT_BATCH = 64  # prompts per text-tower call (each call is cut to its longest prompt)


def default_cache_dir() -> Path:
    """$ZSFINERCAM_CACHE, else ~/.cache/zsfinercam (read when called, not at import)."""
    return Path(os.environ.get("ZSFINERCAM_CACHE") or Path.home() / ".cache" / "zsfinercam")


REAL_CLIP = "--model ViT-B-16 --pretrained openai"  # the command-line flags of a real CLIP


def unknown_words(known: Sequence[str] | None, texts: Sequence[str]) -> dict[str, list[str]]:
    """{text: its words outside `known`} for each text with such words; none for an open vocabulary
    (`known` None). Words are runs of letters, compared in lower case."""
    if known is None:
        return {}
    vocabulary = set(known)
    found = {t: [w for w in re.findall(r"[a-z]+", t.lower()) if w not in vocabulary] for t in texts}
    return {t: words for t, words in found.items() if words}


def vocabulary_notice(known: Sequence[str] | None, texts: Sequence[str]) -> str | None:
    """One line for texts a closed-vocabulary model (the toy) cannot read, naming a real CLIP; None if all read."""
    unknown = unknown_words(known, texts)
    if not unknown:
        return None
    shown = "; ".join(f"{', '.join(map(repr, dict.fromkeys(w)))} in {t!r}" for t, w in list(unknown.items())[:3])
    more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
    return (f"the toy model knows only synthetic birds (red, blue, yellow or green heads and tails; plain, "
            f"striped or spotted wings), not {shown}{more}; for real images use a real CLIP ({REAL_CLIP}), "
            f"or set a default model once with ZSFINERCAM_MODEL and ZSFINERCAM_PRETRAINED")


class ConceptEncoder:
    """Concept embeddings for one backend, cached."""

    def __init__(self, backend: Backend, cache_dir: Path | None = None):
        self.backend = backend
        self.cache_dir = cache_dir
        self._memory: dict[tuple[str, str], torch.Tensor] = {}

    def __call__(self, concepts: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Normalised embeddings (K, E), one row per concept, in order."""
        concepts = check_concepts(concepts, allow_empty=True)
        templates = list(templates)
        if not templates:
            raise UsageError("the template list is empty; give at least one template such as 'a photo of a {}.'")
        key = hashlib.sha1("\n".join(templates).encode()).hexdigest()[:16]
        missing = list(dict.fromkeys(c for c in concepts if (key, c) not in self._memory))
        if missing and self.cache_dir is not None:
            self._load_disk(key)
            missing = [c for c in missing if (key, c) not in self._memory]
        if missing:
            fresh = self._encode(missing, templates)
            self._memory.update({(key, c): row for c, row in zip(missing, fresh)})
            if self.cache_dir is not None:
                self._save_disk(key)
        return torch.stack([self._memory[(key, c)] for c in concepts])

    def _encode(self, concepts: list[str], templates: list[str]) -> torch.Tensor:
        self._warn_truncated(concepts, max(templates, key=len))
        prompts = [t.replace("{}", c) for c in concepts for t in templates]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
        if len(prompts) > MANY_PROMPTS:
            note(f"encoding {len(prompts):,} prompts ({len(concepts):,} concepts x {len(templates):,} templates) ...")
        rows = []
        for start in bar(range(0, len(order), TEXT_BATCH), desc="text", unit="batch"):
            tokens = self.backend.tokenize([prompts[i] for i in order[start:start + TEXT_BATCH]])
            rows.append(F.normalize(self.backend.encode_text(tokens), dim=-1))
        encoded = torch.empty_like(torch.cat(rows))
        encoded[torch.tensor(order, device=encoded.device)] = torch.cat(rows)
        per_template = encoded.view(len(concepts), len(templates), -1)
        return F.normalize(per_template.mean(dim=1), dim=-1)

    def _warn_truncated(self, concepts: list[str], template: str) -> None:
        tokenizer = self.backend.tokenizer
        encode = getattr(tokenizer, "encode", None)  # ids without special tokens
        # room left by the special tokens: start and end (CLIP, the default), only the end (SigLIP)
        limit = self.backend.config.context_length - getattr(tokenizer, "num_special_tokens", 2)
        if encode is None:
            return
        long = [c for c in concepts if len(encode(template.replace("{}", c))) > limit]
        if long:
            shown = ", ".join(repr(c[:40]) for c in long[:3]) + (f" and {len(long) - 3} more" if len(long) > 3 else "")
            warnings.warn(f"{len(long)} prompt(s) longer than the text context ({limit} tokens) were truncated: "
                          f"{shown}", stacklevel=3)

    def _path(self, key: str) -> Path:
        return self.cache_dir / "text" / f"{self.backend.fingerprint()}-{key}.safetensors"

    def _load_disk(self, key: str) -> None:
        from safetensors import safe_open

        path = self._path(key)
        if not path.is_file():
            return
        try:
            with safe_open(str(path), framework="pt") as f:
                names = json.loads(f.metadata()["concepts"])
                table = f.get_tensor("embeddings").to(self.backend.device)
        except Exception as err:  # noqa: BLE001 - a damaged cache file is rebuilt, never fatal
            warnings.warn(f"ignoring unreadable text cache {path}: {err}", stacklevel=3)
            return
        for name, row in zip(names, table):
            self._memory.setdefault((key, name), row)

    def _save_disk(self, key: str) -> None:
        from safetensors.torch import save

        from ..io.files import atomic_write

        names = [c for (k, c) in self._memory if k == key]
        table = torch.stack([self._memory[(key, c)] for c in names]).cpu().contiguous()
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = save({"embeddings": table}, metadata={"concepts": json.dumps(names, ensure_ascii=False)})
            atomic_write(path, lambda f: f.write(data))
        except OSError as err:
            warnings.warn(f"could not write the text cache {path}: {err}", stacklevel=3)
