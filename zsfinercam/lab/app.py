"""The prompt lab page: gradio widgets wired to `zsfinercam.lab.session` (gradio is imported only here).

The main action is the API endpoint `locate`:
    Client(url).predict(image=handle_file(path), concepts="a\\nb", api_name="/locate")
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import UsageError, WorkError
from . import session

if TYPE_CHECKING:
    from ..localizer import Localizer

INSTALL_HINT = 'the prompt lab needs gradio; install it with: pip install "zsfinercam[lab]"'
MAX_FILE_SIZE = "25mb"  # uploads over this are refused by the server
CONCURRENCY = 1  # requests running on the model at once; the rest wait in gradio's queue
QUEUE_SIZE = 64


def import_gradio():
    """gradio, with its analytics and update check off unless the environment already says."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return gradio


def build_app(loc: "Localizer", examples: Sequence[str | os.PathLike] = (), *,
              cache: session.FeatureCache | None = None):
    """The page for one loaded model.

    Args:
        loc: the model, loaded once per process and shared by every session.
        examples: image files the server offers (the only server paths the page reads besides uploads).
        cache: the shared feature cache; default a new one with the default bounds.

    Returns:
        A gradio Blocks with the `locate` endpoint, queued with a concurrency limit.
    """
    gr = import_gradio()
    cache = cache if cache is not None else session.FeatureCache()
    with gr.Blocks(title="zsfinercam prompt lab", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## zsfinercam prompt lab\nModel **{loc.config.name}**. A new image runs the trunk once; "
                    "new concepts, references, rule or alpha on the same image reuse its features.")
        folder = gr.State(None, delete_callback=_remove_folder, time_to_live=3600)  # this session's downloads
        with gr.Row():
            with gr.Column(scale=1):
                inputs, run = _input_widgets(gr, loc, examples)
            with gr.Column(scale=2):
                outputs = _output_widgets(gr)
        gr.on([run.click, inputs[1].submit], _handler(gr, loc, cache), [*inputs, folder], [*outputs, folder],
              api_name="locate", concurrency_limit=CONCURRENCY, concurrency_id="model", trigger_mode="always_last")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return demo


def _handler(gr, loc: "Localizer", cache: session.FeatureCache):
    """The `locate` event: widget values in, the page's outputs (and the downloads folder) out."""
    size = loc.config.image_size

    def locate(image, concepts, references=None, contrast=session.DEFAULT_CONTRAST, vocab=session.MODEL_VOCAB,
               alpha=None, templates=None, method="finer", objective="weighted", base=None, zoom=False,
               faithfulness="off", folder=None):
        """The CAM base alone, Finer-CAM and their difference for each concept (one per line) in
        the image; `base` (the CAM base) defaults to the model's (`Localizer.options`); `zoom` maps each
        concept in a window around the subject (zsfinercam.zoom); `faithfulness`: "off", "both" or
        "deletion"."""
        try:
            request = session.parse_request(concepts, references, contrast, vocab, alpha, templates, method,
                                            objective, base, zoom, faithfulness)
            if not image:
                raise UsageError("no image given; upload an image or pick an example")
            result = session.run_request(loc, cache, image, request)
            folder = folder or session.new_download_folder()
            files = session.write_downloads(result, folder)
        except (UsageError, WorkError) as err:
            raise gr.Error(" ".join(str(err).split()), print_exception=False) from None
        return (session.gallery(result), session.score_rows(result), session.references_text(result),
                session.neighbours_text(result), session.summary(result), files,
                session.status_text(result, size), folder)

    return locate


def _input_widgets(gr, loc: "Localizer", examples):
    """([image, concepts, references, contrast, vocab, alpha, templates, method, objective, base, zoom,
    faithfulness], the button)."""
    from ..options import BASES, DEFAULT_ALPHA, FAITHFULNESS_NAMES, METHODS, OBJECTIVES, STRATEGIES
    from ..concepts.vocab import list_templates, list_vocabs

    image = _image_input(label="image", type="filepath", sources=["upload", "clipboard"], elem_id="image", height=320)
    if examples:
        gr.Examples([[str(p)] for p in examples], inputs=[image], label="examples")
    concepts = gr.Textbox(label="concepts (one per line)", lines=3, elem_id="concepts")
    references = gr.Textbox(label="references (one per line, optional)", lines=2, elem_id="references")
    run = gr.Button("Locate", variant="primary", elem_id="locate")
    with gr.Accordion("options", open=False):
        contrast = gr.Dropdown([session.DEFAULT_CONTRAST, *STRATEGIES], value=session.DEFAULT_CONTRAST,
                               label="contrast rule")
        vocab = gr.Dropdown([session.MODEL_VOCAB, *list_vocabs()], value=session.MODEL_VOCAB, label="vocabulary",
                            allow_custom_value=True)  # checked by parse_request, with the CLI's message
        templates = gr.Dropdown(list_templates(), value=None, label="templates (empty: the model's)")
        # the alpha in use, shown: a page renders an empty number as 0 and sends 0 (the base alone)
        alpha = gr.Number(DEFAULT_ALPHA["weighted"], label="alpha (contrast strength; 0: the base alone)",
                          minimum=0, elem_id="alpha")
        method = gr.Radio(list(METHODS), value="finer", label="method (base: the CAM base alone)")
        objective = gr.Dropdown(list(OBJECTIVES), value="weighted", label="objective (sets alpha to its default)")
        objective.change(DEFAULT_ALPHA.get, objective, alpha, api_visibility="private")
        base = gr.Dropdown(list(BASES), value=loc.options().base, label="CAM base", elem_id="base")
        zoom = gr.Checkbox(False, label="zoom: map a window around the subject (small subjects)", elem_id="zoom")
        faithfulness = gr.Dropdown(list(FAITHFULNESS_NAMES), value="off", elem_id="faithfulness",
                                   label="faithfulness (both: deletion + insertion; deletion: cheaper)")
        h, w = loc.config.image_size
        gr.Markdown(f"Image size **{w} x {h}**: a model property, set with `--image-size` at launch; "
                    "a new size needs the trunk again.")
    return ([image, concepts, references, contrast, vocab, alpha, templates, method, objective, base, zoom,
             faithfulness], run)


def _output_widgets(gr):
    """[maps, scores, references, neighbours, JSON, downloads, status], in `_handler`'s order."""
    status = gr.Markdown(label="status", elem_id="status")
    maps = gr.Gallery(label="base alone | Finer-CAM | Finer - base", columns=3, height="auto", object_fit="contain",
                      elem_id="maps")
    scores = gr.Dataframe(headers=session.SCORE_HEADERS, interactive=False,
                          label="scores (p: softmax over the concept and its references)",
                          column_widths=["14%", "42%", "11%", "11%", "11%", "11%"], wrap=True)
    used = gr.Markdown(label="references")
    near = gr.Markdown(label="neighbours")
    files = gr.File(label="downloads", file_count="multiple", interactive=False)
    as_json = gr.JSON(label="results (to_dict, arrays left out)")
    return [maps, scores, used, near, as_json, files, status]


def launch(loc: "Localizer", examples: Sequence[str | os.PathLike] = (), *, host: str = "127.0.0.1",
           port: int | None = 7860, share: bool = False, block: bool = True):
    """Serve the page; binds `host` (loopback by default), a public share link only when asked.

    Returns gradio's (app, local_url, share_url) when `block` is False.
    """
    demo = build_app(loc, examples)
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_SIZE,
                       prevent_thread_lock=not block, show_error=True, quiet=not block)


def _remove_folder(folder: str | None) -> None:
    if folder and Path(folder).name.startswith("zsfinercam-lab-"):
        shutil.rmtree(folder, ignore_errors=True)


def _image_input(**kwargs):
    """A gr.Image whose uploads reach `locate` as the file's path, unopened, so a file that is not
    an image gets our one-line message (from `load_image`) instead of a PIL error. (The instance's
    preprocess is wrapped: a subclass would make gradio write a .pyi file into this package.)"""
    gr = import_gradio()
    image = gr.Image(**kwargs)
    opened = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return opened(payload)

    image.preprocess = preprocess
    return image
