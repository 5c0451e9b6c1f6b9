"""Where Hugging Face transformers models come from: folders, the hub cache, offline errors.

Every request ends in a local `save_pretrained` folder before transformers is imported,
so a machine without network fails at once with one clear line. Transformers' own
offline fallback is never reached: with HF_HUB_OFFLINE=1 a missing hub id can load a
degenerate two-token tokenizer instead of failing (docs/design.md, "Tokenizers and weights
offline"), so the tokenizer that does load is checked as well.
"""
from __future__ import annotations

from pathlib import Path

from ..config import OPENAI_MEAN, OPENAI_STD
from ..errors import UsageError, WeightsUnavailableError, WorkError, first_line
from .open_clip_weights import HF_PREFIX, LOCAL_PREFIX, cached_file, hub_reachable, hub_cache_dir, read_json_object

# model_type in config.json -> (transformers class, default mean, default std)
SUPPORTED = {
    "clip": ("CLIPModel", OPENAI_MEAN, OPENAI_STD),
    "siglip": ("SiglipModel", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_NAMES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]  # never pickles unless nothing else exists
USAGE = "pass a transformers save_pretrained folder (--model local-dir:PATH) or a hub repo (--model hf-hub:ORG/REPO)"


def resolve_folder(name: str, pretrained: str | None, model_config: str | None) -> Path:
    """A local folder holding config.json, weights and tokenizer files for `name`.

    Accepts "local-dir:PATH", an existing folder, "hf-hub:ORG/REPO" and "ORG/REPO".
    """
    if pretrained is not None or model_config is not None:
        flag = "--pretrained" if pretrained is not None else "--model-config"
        raise UsageError(f"{flag} is not used by the hf backend: weights and config come from the model "
                         f"folder or hub repo; {USAGE}")
    if name.startswith(LOCAL_PREFIX):
        return check_folder(Path(name[len(LOCAL_PREFIX):]).expanduser())
    path = Path(name).expanduser()
    if path.is_dir():
        return check_folder(path)
    if name.startswith(HF_PREFIX):
        return hub_folder(name[len(HF_PREFIX):])
    if name.count("/") == 1 and not path.exists() and not name.startswith((".", "/", "~")):
        return hub_folder(name)
    if path.exists():
        raise UsageError(f"{name} is a file; the hf backend loads a model folder: {USAGE}")
    raise UsageError(f"model {name!r} is neither a folder nor a hub repo id; {USAGE}")


def check_folder(folder: Path) -> Path:
    """The folder itself, once it looks like a supported transformers model."""
    if not folder.is_dir():
        raise UsageError(f"model folder not found: {folder}")
    if not (folder / "config.json").is_file():
        is_open_clip = (folder / "open_clip_config.json").is_file()
        hint = " (it is an open_clip folder: use --backend open_clip)" if is_open_clip else ""
        raise UsageError(f"{folder} has no config.json; expected a transformers save_pretrained folder{hint}")
    if not any((folder / n).is_file() for n in WEIGHT_NAMES):
        raise UsageError(f"{folder} has no weights file ({', '.join(WEIGHT_NAMES[:3])})")
    if not any((folder / n).is_file() for n in TOKENIZER_NAMES):
        raise UsageError(f"{folder} has no tokenizer files ({', '.join(TOKENIZER_NAMES)}); save the tokenizer "
                         "with tokenizer.save_pretrained(folder) too")
    model_type(folder)
    return folder


def model_type(folder: Path) -> str:
    """config.json's model_type, if it is one the backend supports."""
    kind = read_json_object(folder / "config.json", "model config").get("model_type")
    if kind not in SUPPORTED:
        names = ", ".join(SUPPORTED[k][0] for k in SUPPORTED)
        raise UsageError(f"{folder}: model_type {kind!r} is not supported by the hf backend (supported: {names})")
    return kind


def preprocess(folder: Path, kind: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from preprocessor_config.json, else the family's defaults.

    The processor's resize/crop sizes are not used: images are resized whole to the
    tower's size (see images.to_pixels), and that size comes from the model config.
    """
    _, mean, std = SUPPORTED[kind]
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return mean, std
    raw = read_json_object(path, "preprocessor config")
    mean = tuple(float(v) for v in raw.get("image_mean", mean))
    std = tuple(float(v) for v in raw.get("image_std", std))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UsageError(f"{path}: image_mean and image_std must be three numbers each, std > 0")
    return mean, std


def load_model(folder: Path, kind: str):
    """The model in float32, from safetensors (or a weights-only torch checkpoint), never remote code."""
    import transformers

    cls = getattr(transformers, SUPPORTED[kind][0])
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - transformers/torch/safetensors raise many types for bad files
        raise WorkError(f"could not load weights from {folder}: {first_line(err)} (only safetensors or "
                        "weights-only torch checkpoints that match config.json are accepted)") from None
    return model.float().eval()


def load_tokenizer(folder: Path):
    """The folder's tokenizer through AutoTokenizer, offline."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except ImportError as err:  # SiglipTokenizer needs sentencepiece and protobuf, both our dependencies
        why = first_line(err).split(". ")[0].rstrip(".")  # transformers' text goes on to a link, over lines
        raise WorkError(f"the tokenizer of {folder} needs a package that is not installed: {why} (reinstall "
                        "zsfinercam with its dependencies, or pip install sentencepiece protobuf)") from None
    except Exception as err:  # noqa: BLE001 - tokenizer loaders raise many types for bad files
        raise WorkError(f"could not load the tokenizer of {folder}: {first_line(err)}") from None


def hub_folder(repo_id: str) -> Path:
    """The cached snapshot of a hub repo, downloaded first when the hub is reachable."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UsageError(f"hub repo ids look like ORG/REPO, got {repo_id!r}")
    config = cached_file(repo_id, "config.json")
    if config:
        folder = Path(config).parent
        if any((folder / n).is_file() for n in WEIGHT_NAMES) and any((folder / n).is_file() for n in TOKENIZER_NAMES):
            return check_folder(folder)
    if not hub_reachable():
        raise WeightsUnavailableError(
            f"model hf-hub:{repo_id} is not in the Hugging Face cache ({hub_cache_dir()}) and the hub cannot be "
            f"reached (offline?); download it on a machine with network (hf download {repo_id}), "
            "or save it with save_pretrained and pass --model local-dir:/path/to/folder --backend hf")
    return check_folder(_download(repo_id))


def _download(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
        if not any((folder / n).is_file() for n in WEIGHT_NAMES):
            hf_hub_download(repo_id, "pytorch_model.bin")  # loaded weights-only by transformers
    except Exception as err:  # noqa: BLE001 - the hub raises many types
        raise WeightsUnavailableError(f"could not download hf-hub:{repo_id}: {first_line(err)}") from None
    return folder
