"""Shipped vocabularies/templates and the file format of zsfinercam.concepts.vocab."""

import json
import re
import subprocess
import sys
import warnings
from importlib import resources

import pytest

from zsfinercam.errors import UsageError
from zsfinercam.concepts.vocab import (
    DEFAULT_TEMPLATES,
    list_templates,
    list_vocabs,
    load_parts,
    load_templates,
    load_vocab,
    vocab_info,
)

SIZES = {
    "cub200": 200,
    "fgvc_aircraft": 100,
    "stanford_cars": 196,
    "flowers102": 102,
    "oxford_pets": 37,
    "food101": 101,
    "imagenet1k": 1000,
    "cub_parts": 312,
}

# (vocabulary, index, expected entry): pins dataset order at both ends and at known ids.
ENTRIES = [
    ("cub200", 0, "Black-footed Albatross"),
    ("cub200", 8, "Brewer's Blackbird"),
    ("cub200", 140, "Arctic Tern"),
    ("cub200", 199, "Common Yellowthroat"),
    ("fgvc_aircraft", 0, "707-320"),
    ("fgvc_aircraft", 73, "F/A-18"),
    ("fgvc_aircraft", 99, "Yak-42"),
    ("stanford_cars", 0, "2000 AM General Hummer SUV"),
    ("stanford_cars", 184, "2012 Tesla Model S Sedan"),
    ("stanford_cars", 195, "2012 smart fortwo Convertible"),
    ("flowers102", 0, "pink primrose"),
    ("flowers102", 59, "pink and yellow dahlia"),
    ("flowers102", 101, "blackberry lily"),
    ("oxford_pets", 0, "Abyssinian"),
    ("oxford_pets", 1, "american bulldog"),
    ("oxford_pets", 5, "Bengal"),
    ("oxford_pets", 36, "yorkshire terrier"),
    ("food101", 0, "apple pie"),
    ("food101", 100, "waffles"),
    ("imagenet1k", 0, "tench"),
    ("imagenet1k", 657, "missile"),
    ("imagenet1k", 744, "projectile"),
    ("imagenet1k", 836, "sunglass"),
    ("imagenet1k", 837, "sunglasses"),
    ("imagenet1k", 999, "toilet paper"),
]

CUB_GROUP_SIZES = {  # CUB-200-2011 attributes.txt: values per attribute group
    "bill_shape": 9, "wing_color": 15, "upperparts_color": 15, "underparts_color": 15,
    "breast_pattern": 4, "back_color": 15, "tail_shape": 6, "upper_tail_color": 15,
    "head_pattern": 11, "breast_color": 15, "throat_color": 15, "eye_color": 14,
    "bill_length": 3, "forehead_color": 15, "under_tail_color": 15, "nape_color": 15,
    "belly_color": 15, "wing_shape": 5, "size": 5, "shape": 14, "back_pattern": 4,
    "tail_pattern": 4, "belly_pattern": 4, "primary_color": 15, "leg_color": 15,
    "bill_color": 15, "crown_color": 15, "wing_pattern": 4,
}

UNICODE = ["Kōwhai", "café au lait", "鸟 (niǎo)", "Ætherial owl 🦉", "Ünïcödé  spaced"]


def _write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


# ----------------------------------------------------------------------------- shipped
def test_shipped_names():
    assert list_vocabs() == sorted(SIZES)
    assert list_templates() == ["openai_imagenet", "short", "single"]
    assert list_vocabs("cub*") == ["cub200", "cub_parts"]
    assert list_templates("s*") == ["short", "single"]


@pytest.mark.parametrize("name", sorted(SIZES))
def test_vocab_size_and_uniqueness(name):
    entries = load_vocab(name)
    assert len(entries) == SIZES[name]
    assert len(set(entries)) == len(entries)
    assert len({e.casefold() for e in entries}) == len(entries)
    assert all(e == e.strip() and e and "\n" not in e for e in entries)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_shipped_files_have_no_repeats_to_drop(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_vocab(name)


@pytest.mark.parametrize("name,index,expected", ENTRIES)
def test_dataset_order(name, index, expected):
    assert load_vocab(name)[index] == expected


def test_packaged_files_are_found_by_importlib_resources():
    root = resources.files("zsfinercam.prompts")
    files = {item.name for item in root.iterdir()}
    for name in list_vocabs():
        assert f"{name}.txt" in files or f"{name}.json" in files
    for name in list_templates():
        assert f"templates_{name}.txt" in files or f"templates_{name}.json" in files
    # pyproject ships "*.txt" and "*.json" at the package top level only.
    assert all(not item.is_dir() or item.name == "__pycache__" for item in root.iterdir())


def test_vocab_info_lists_every_shipped_file_with_its_size():
    info = {r["name"]: r for r in vocab_info()}
    assert set(info) == set(SIZES) | set(list_templates())
    for name, size in SIZES.items():
        assert info[name]["size"] == size
    assert info["cub_parts"]["kind"] == "parts" and info["cub_parts"]["parts"] == 18
    assert info["cub200"]["kind"] == "classes" and info["cub200"]["parts"] == 0
    assert (info["openai_imagenet"]["kind"], info["openai_imagenet"]["size"]) == ("templates", 80)
    assert all(r["description"] for r in info.values())


# ----------------------------------------------------------------------------- cub_parts
def _cub_parts_json():
    text = resources.files("zsfinercam.prompts").joinpath("cub_parts.json").read_text("utf-8")
    return json.loads(text)


def test_cub_parts_cover_all_312_attributes():
    attributes = _cub_parts_json()["attributes"]
    assert len(attributes) == 312
    groups = {}
    for name in attributes:
        match = re.fullmatch(r"has_([a-z_]+)::(.+)", name)
        assert match, name
        groups[match.group(1)] = groups.get(match.group(1), 0) + 1
    assert groups == CUB_GROUP_SIZES
    flat = load_vocab("cub_parts")
    assert sorted(attributes.values()) == sorted(flat)


def test_cub_parts_grouping():
    parts = load_parts("cub_parts")
    assert list(parts) == ["bill", "crown", "forehead", "head", "eye", "nape", "throat",
                           "breast", "belly", "underparts", "upperparts", "back", "wing",
                           "tail", "leg", "primary color", "size", "shape"]
    sizes = {p: len(v) for p, v in parts.items()}
    assert sizes["bill"] == 9 + 3 + 15 and sizes["wing"] == 15 + 5 + 4
    assert sizes["tail"] == 6 + 15 + 15 + 4 and sizes["eye"] == 14
    assert sum(sizes.values()) == 312
    attributes = _cub_parts_json()["attributes"]
    assert attributes["has_wing_color::blue"] == "blue wings"
    assert attributes["has_bill_shape::dagger"] == "dagger-shaped bill"
    assert attributes["has_wing_pattern::spotted"] == "spotted wings"
    assert "blue wings" in parts["wing"] and "spotted wings" in parts["wing"]
    assert "forked tail" in parts["tail"] and "hooked bill" in parts["bill"]
    assert load_vocab("cub_parts") == [p for v in parts.values() for p in v]


# ----------------------------------------------------------------------------- templates
def test_templates_shipped():
    openai = load_templates("openai_imagenet")
    assert len(openai) == 80 and len(set(openai)) == 80
    assert openai[0] == "a bad photo of a {}." and openai[-1] == "a tattoo of the {}."
    for name in list_templates():
        for template in load_templates(name):
            assert template.count("{}") == 1
            assert template.format("x").count("x") >= 1
    assert set(load_templates("short")) <= set(openai)
    assert load_templates("single") == ["a photo of a {}."]
    assert DEFAULT_TEMPLATES in list_templates()
    assert load_templates() == load_templates(DEFAULT_TEMPLATES)


@pytest.mark.parametrize("bad,line", [
    ("a photo of a dog.", 3), ("a {} and a {}.", 3), ("a {adj} photo of a {}.", 3),
    ("a photo of a {} }", 3),
])
def test_template_needs_exactly_one_placeholder(tmp_path, bad, line):
    path = _write(tmp_path / "t.txt", f"# templates\na photo of a {{}}.\n{bad}\n")
    with pytest.raises(ValueError, match=rf"line {line}:.*exactly one"):
        load_templates(path)


def test_user_templates_json_and_unicode(tmp_path):
    templates = ["une photo d'un {}.", "{} 的照片", "a photo of a {}, a type of bird."]
    path = _write(tmp_path / "t.json", json.dumps({"templates": templates}))
    assert load_templates(path) == templates
    assert load_templates(_write(tmp_path / "l.json", json.dumps(templates))) == templates


# ----------------------------------------------------------------------------- user files
def test_user_txt_round_trip_with_unicode_and_long_entries(tmp_path):
    long_entry = "a bird with " + ", ".join(f"feature {i}" for i in range(400))
    expected = ["red-tailed hawk", *UNICODE, long_entry]
    text = ("\ufeff# my concepts\n\n  red-tailed hawk  \n\t# an indented comment\n"
            + "\n".join(UNICODE[:2]) + "\n\n" + "\n".join(UNICODE[2:]) + f"\n{long_entry}")
    (tmp_path / "données").mkdir()
    path = _write(tmp_path / "données" / "concepts.txt", text)
    assert load_vocab(path) == expected
    assert load_vocab(str(path)) == expected
    assert len(load_vocab(path)[-1]) == len(long_entry) > 3000


@pytest.mark.parametrize("payload", [
    ["b", "a", "Kōwhai"],
    {"classes": ["b", "a", "Kōwhai"], "description": "mine"},
])
def test_user_json_round_trip(tmp_path, payload):
    path = _write(tmp_path / "v.json", json.dumps(payload, ensure_ascii=False))
    assert load_vocab(path) == ["b", "a", "Kōwhai"]


def test_user_part_vocab_txt_and_json(tmp_path):
    txt = _write(tmp_path / "p.txt", "# parts\n[bill]\nhooked bill\n\n[wing]\npointed wings\n"
                 "[bill]\ncone-shaped bill\n")
    expected = {"bill": ["hooked bill", "cone-shaped bill"], "wing": ["pointed wings"]}
    assert load_parts(txt) == expected
    assert load_vocab(txt) == ["hooked bill", "pointed wings", "cone-shaped bill"]
    js = _write(tmp_path / "p.json", json.dumps({"parts": expected}))
    assert load_parts(js) == expected
    assert load_vocab(js) == ["hooked bill", "cone-shaped bill", "pointed wings"]


def test_duplicates_keep_first_and_warn(tmp_path):
    path = _write(tmp_path / "d.txt", "b\na\nb\nc\na\n")
    with pytest.warns(UserWarning, match=r"dropped 2 repeated entries.*'b' \(line 3\)"):
        assert load_vocab(path) == ["b", "a", "c"]


def test_results_are_copies():
    first = load_vocab("cub200")
    first.clear()
    assert len(load_vocab("cub200")) == 200
    parts = load_parts("cub_parts")
    parts["bill"].clear()
    assert len(load_parts("cub_parts")["bill"]) == 27


def test_edited_user_file_is_reloaded(tmp_path):
    path = _write(tmp_path / "v.txt", "a\n")
    assert load_vocab(path) == ["a"]
    _write(path, "a\nlonger entry\n")
    assert load_vocab(path) == ["a", "longer entry"]


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("loader,names", [(load_vocab, list_vocabs), (load_templates,
                                                                     list_templates)])
def test_unknown_name_lists_shipped_names(loader, names):
    with pytest.raises(ValueError) as err:
        loader("no_such_vocabulary")
    for name in names():
        assert name in str(err.value)


def test_missing_path_lists_shipped_names(tmp_path):
    with pytest.raises(ValueError, match=r"no file at .*cub200.*imagenet1k"):
        load_vocab(tmp_path / "missing.txt")


def test_wrong_kind_points_to_the_right_loader():
    with pytest.raises(ValueError, match="use load_templates"):
        load_vocab("short")
    with pytest.raises(ValueError, match="use load_vocab"):
        load_templates("cub200")
    with pytest.raises(ValueError, match="part vocabularies: cub_parts"):
        load_parts("cub200")


@pytest.mark.parametrize("name,text,message", [
    ("e.txt", "# only a comment\n\n", "no entries"),
    ("v.csv", "a,b\n", "unsupported file type"),
    ("two.json", '{"classes": ["a"], "templates": ["{}"]}', "exactly one of the keys"),
    ("none.json", '{"names": ["a"]}', "found none"),
    ("bad.json", '{"classes": ["a",]}', "invalid JSON at line 1"),
    ("num.json", '{"classes": ["a", 3]}', "entry 2: expected a non-empty string"),
    ("blank.json", '["a", "  "]', "entry 2"),
    ("scalar.json", '"a"', "expected a JSON list or object"),
    ("head.txt", "loose entry\n[bill]\nhooked bill\n", r"line 1: entry before the first"),
    ("emptyhead.txt", "[]\nx\n", "empty part name"),
])
def test_malformed_files(tmp_path, name, text, message):
    path = _write(tmp_path / name, text)
    with pytest.raises(ValueError, match=message):
        load_vocab(path)


def test_template_file_is_not_a_vocab_and_vice_versa(tmp_path):
    templates = _write(tmp_path / "t.json", json.dumps({"templates": ["a {}."]}))
    with pytest.raises(ValueError, match="use load_templates"):
        load_vocab(templates)
    classes = _write(tmp_path / "c.json", json.dumps({"classes": ["a"]}))
    with pytest.raises(ValueError, match="use load_vocab"):
        load_templates(classes)


def test_bad_argument_types():
    with pytest.raises(TypeError, match="shipped name or a file path"):
        load_vocab(3)
    with pytest.raises(TypeError):
        load_templates(["a {}"])


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8"):
        load_vocab(path)


def test_errors_are_usage_errors():
    with pytest.raises(UsageError):
        load_vocab("no_such_vocabulary")
    assert issubclass(UsageError, ValueError)


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(ValueError, match="no file at"):
        load_vocab(tmp_path)


def test_import_reads_no_files():
    code = ("import zsfinercam.concepts.vocab as v; "
            "print(v._shipped.cache_info().currsize, v._load_shipped.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["0", "0"]
