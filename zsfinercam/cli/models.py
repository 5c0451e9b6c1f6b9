"""`zsfinercam models`: what can be loaded, and which weights are already here (torch is not imported)."""
from __future__ import annotations

import fnmatch

import click

from .flags import quiet_option

BACKENDS = ("open_clip", "hf")


@click.command()
@click.argument("pattern", default="*")
@click.option("--cached", is_flag=True, help="Only weights already in the local cache.")
@click.option("--backend", type=click.Choice(BACKENDS), default="open_clip", show_default=True,
              help="open_clip: its architectures and weight tags (CLS-pooled ViTs, timm ViT towers such as "
                   "SigLIP); hf: the CLIP and SigLIP repos in the local Hugging Face cache.")
@quiet_option
def models(pattern, cached, backend):
    """List loadable models matching PATTERN (e.g. 'ViT-B*'), their weights, and whether those are
    already here; the others download on first use."""
    from ..backends.catalog import Entry, clip_cache, hub_cache, hf_entries, open_clip_entries
    from ..backends.open_clip_weights import TOY_DIR
    from ..io.progress import note

    if backend == "hf":
        rows = hf_entries()
    else:
        rows = [Entry("toy", "embedded", (TOY_DIR / "toy.safetensors").is_file()), *open_clip_entries()]
    rows = [r for r in rows if fnmatch.fnmatch(r.name, pattern) and (r.cached or not cached)]
    table = [("model", "weights", "cached", "")] + [
        (r.name, r.tag or "-", "yes" if r.cached else "no: downloads on first use", r.note) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        click.echo(("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + f"  {row[3]}").rstrip())
    if backend == "hf":
        note(f"cache: {hub_cache()}; load one with --backend hf --model ORG/REPO (or hf-hub:ORG/REPO, local-dir:PATH)")
    else:
        note(f"cache: {hub_cache()} and {clip_cache()}; load one with --model NAME --pretrained TAG, or "
             f"--pretrained /path/to/weights.safetensors; `models --backend hf` lists the hf backend's")
