"""`zsfinercam models`: what can be loaded, and which weights are already cached."""
from __future__ import annotations

import fnmatch
import os

import click


@click.command()
@click.argument("pattern", default="*")
@click.option("--cached", is_flag=True, help="Only weights already in the local cache.")
def models(pattern, cached):
    """List loadable models (open_clip name and weights tag) matching PATTERN, e.g. 'ViT-B*'."""
    import open_clip

    from ..backends.open_clip_weights import CHECKPOINT_NAMES, TOY_DIR, hub_cache_dir, is_cached

    rows = [("toy", "embedded", "yes" if (TOY_DIR / "toy.safetensors").is_file() else "no")]
    for name, tag in open_clip.list_pretrained():
        if not fnmatch.fnmatch(name, pattern) or not _supported(name):
            continue
        cfg = open_clip.get_pretrained_cfg(name, tag)
        rows.append((name, tag, "yes" if is_cached(cfg) else "no"))
    rows = [r for r in rows if fnmatch.fnmatch(r[0], pattern) and (not cached or r[2] == "yes")]
    width = max(len(r[0]) for r in rows) if rows else 0
    tag_width = max(len(r[1]) for r in rows) if rows else 0
    click.echo(f"{'model':<{width}}  {'weights':<{tag_width}}  cached")
    for name, tag, hit in rows:
        click.echo(f"{name:<{width}}  {tag:<{tag_width}}  {hit}")
    click.echo(f"# cache: {hub_cache_dir()} and {os.path.expanduser('~/.cache/clip')}; "
               f"load one with --model NAME --pretrained TAG, or --pretrained /path/to/"
               f"{CHECKPOINT_NAMES[1]}", err=True)


def _supported(name: str) -> bool:
    """CLS-pooled open_clip ViTs: what the open_clip backend handles today."""
    import open_clip

    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    return ("timm_model_name" not in vision and not vision.get("attentional_pool")
            and vision.get("pool_type", "tok") == "tok" and isinstance(vision.get("layers"), int))
