"""Prompt lab speed and memory: new prompts on a cached image vs a plain forward, the browser
round trip, and the server's memory after many different images.

    python benchmarks/bench_lab.py --model ViT-B-16 --device cpu            # all three parts
    python benchmarks/bench_lab.py --part server --repeats 7

ViT-B-16 without --pretrained builds random weights offline. Figures are printed as JSON.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIRD = ROOT / "examples" / "bird.png"
CHROMIUM = "/usr/bin/chromium"


def rss_mb() -> float:
    """This process's resident memory (Linux), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def server_part(loc, repeats: int) -> dict:
    """Server time of 4 new concepts on a cached image (text warm and cold) vs a plain forward."""
    import torch

    from zsfinercam.io.images import load_image
    from zsfinercam.lab import session
    from zsfinercam.concepts.vocab import load_vocab

    cache = session.FeatureCache()
    pixels = loc.pixels([load_image(str(BIRD))[0]])
    with torch.inference_mode():
        forward = median_s(lambda: loc.backend.encode_pixels(pixels), repeats)
    warm_pool, cold_pool = iter(load_vocab("cub200")), iter(load_vocab("imagenet1k"))
    refs = "Blue Jay\nCardinal\nAmerican Crow"
    first = session.parse_request("Bald Eagle", refs, vocab="cub200")
    start = time.perf_counter()
    session.run_request(loc, cache, BIRD, first)  # trunk, Jacobian, cub200's text (neighbours): now warm
    first_s = time.perf_counter() - start

    def new_prompts(pool):
        concepts = "\n".join(itertools.islice(pool, 4))
        return session.run_request(loc, cache, BIRD, session.parse_request(concepts, refs, vocab="cub200"))

    warm = median_s(lambda: new_prompts(warm_pool), repeats)
    cold = median_s(lambda: new_prompts(cold_pool), repeats)
    return {"plain_forward_s": forward, "first_request_new_image_s": first_s,
            "four_new_concepts_text_warm_s": warm, "four_new_concepts_text_cold_s": cold,
            "ratio_warm_vs_forward": warm / forward, "ratio_cold_vs_forward": cold / forward}


def browser_part(loc, repeats: int, screenshot: str | None) -> dict:
    """Click-to-maps time in headless Chromium for new prompts on a cached image."""
    from playwright.sync_api import sync_playwright

    from zsfinercam.lab.app import build_app

    demo = build_app(loc, [BIRD])
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    pool = itertools.count()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator("#image input[type=file]").set_input_files(str(BIRD))
            page.locator("#image img").first.wait_for(timeout=60_000)

            def press(concepts: str) -> None:
                page.locator("#concepts textarea").fill(concepts)
                page.locator("#locate").click()
                page.locator("#status").get_by_text(f"{concepts.count(chr(10)) + 1} concept(s) in").wait_for(
                    timeout=300_000)
                page.locator("#maps img").last.wait_for(timeout=60_000)

            first = median_s(lambda: press("bird\nred tail"), 1)
            rounds = median_s(lambda: press("\n".join(f"bird {next(pool)}" for _ in range(4))), repeats)
            status = page.locator("#status").inner_text()  # the last round's server time, as the page says
            if screenshot:
                press("bird\nred tail")
                page.screenshot(path=screenshot)
            browser.close()
    finally:
        demo.close()
    return {"browser_first_image_s": first, "browser_four_new_concepts_s": rounds, "browser_last_status": status}


def memory_part(loc, images: int) -> dict:
    """The server process's resident memory after `images` different images through the API."""
    from gradio_client import Client, handle_file
    from PIL import Image

    from zsfinercam.lab import session
    from zsfinercam.lab.app import build_app

    cache = session.FeatureCache()
    demo = build_app(loc, cache=cache)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    folder = Path(os.environ["GRADIO_TEMP_DIR"]) / "bench-inputs"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    client, marks = Client(url, verbose=False), {}
    try:
        for i in range(images):
            path = folder / f"noise{i}.png"
            Image.fromarray((rng.rand(320, 320, 3) * 255).astype(np.uint8)).save(path)
            client.predict(image=handle_file(str(path)), concepts="bird\nred tail", api_name="/locate")
            if i + 1 in (1, 10, 25, images):
                marks[f"rss_mb_after_{i + 1}"] = round(rss_mb(), 1)
    finally:
        demo.close()
    return {**marks, "cached_images": len(cache), "cache_mb": round(cache.nbytes / 2**20, 1),
            "cache_bounds": [cache.max_items, round(cache.max_bytes / 2**20)]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--part", choices=["server", "browser", "memory", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--screenshot", default=None, help="Save the browser's page here (PNG).")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import tempfile

    os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="bench-lab-"))
    from zsfinercam.localizer import Localizer

    loc = Localizer.from_pretrained(args.model, device=args.device, cache_dir=None)
    out = {"model": args.model, "device": args.device, "rss_mb_loaded": round(rss_mb(), 1)}
    if args.part in ("server", "all"):
        out.update(server_part(loc, args.repeats))
    if args.part in ("browser", "all"):
        out.update(browser_part(loc, args.repeats, args.screenshot))
    if args.part in ("memory", "all"):
        out.update(memory_part(loc, args.images))
    json.dump({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
