"""Synthetic fine-grained birds with ground-truth part masks.

Classes combine a head colour, a tail colour and a wing pattern, so classes that differ
in one attribute differ in exactly one part. `zsfinercam.synthetic.train` trains the tiny
CLIP shipped as the `toy` model on these images (imported on demand: it needs torch).
"""
from .draw import (
    BODY_COLOURS,
    Sample,
    draw_pose,
    make_background,
    make_dataset,
    make_sample,
    make_scene,
    sample_seeds,
)
from .taxonomy import (
    ATTRIBUTE_PARTS,
    HELDOUT,
    PART_COLOURS,
    PART_VALUES,
    PARTS,
    SPLITS,
    attribute_phrase,
    attribute_phrases,
    class_name,
    differing_parts,
    list_classes,
    name_fragment,
    parse_class,
)

__all__ = [
    "ATTRIBUTE_PARTS", "BODY_COLOURS", "HELDOUT", "PART_COLOURS", "PART_VALUES", "PARTS",
    "SPLITS", "Sample", "attribute_phrase", "attribute_phrases", "class_name",
    "differing_parts", "draw_pose", "list_classes", "make_background", "make_dataset",
    "make_sample", "make_scene", "name_fragment", "parse_class", "sample_seeds",
]
