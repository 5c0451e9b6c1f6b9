"""`zsfinercam prompts` and `zsfinercam neighbors`: what to contrast a concept with."""
from __future__ import annotations

import click

from .flags import load_localizer, model_options, quiet_option, run_options


@click.command("prompts")
@quiet_option
def prompts_command():
    """List the shipped vocabularies and template sets with their sizes."""
    from ..concepts.vocab import vocab_info

    rows = vocab_info()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        size = f"{r['size']} in {r['parts']} parts" if r["kind"] == "parts" else str(r["size"])
        click.echo(f"{r['name']:<{width}}  {r['kind']:<9}  {size:>15}  {r['description']}")


@click.command()
@click.argument("concept")
@click.option("--vocab", default=None, metavar="NAME|FILE",
              help="Vocabulary to search (see `zsfinercam prompts`); default: the model's own classes.")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="How many neighbours.")
@click.option("--templates", default=None, metavar="NAME|FILE", help="Prompt template set or file.")
@model_options
@run_options
def neighbors(concept, vocab, k, templates, model, pretrained, model_config, backend, device, image_size):
    """The K entries of a vocabulary nearest to CONCEPT by text-embedding cosine similarity."""
    from ..concepts.vocab import preflight
    from ..options import LocateOptions

    preflight(LocateOptions(vocab=vocab, templates=templates))  # a misspelt name fails before the model loads
    loc = load_localizer(model, pretrained, model_config, backend, device, image_size)
    for name, score in loc.neighbors(concept, vocab, k, templates=templates):
        click.echo(f"{score:.4f}\t{name}")
