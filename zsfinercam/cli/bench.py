"""`zsfinercam bench`: speed and memory of the fast path against a plain forward and pytorch-grad-cam."""
from __future__ import annotations

import click

from ..backends import list_backends
from .flags import json_option, kernel_option, report_path


def _int_list(ctx, param, value):
    """"224,448" -> (224, 448); None stays None (the device default)."""
    if value is None:
        return None
    try:
        items = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated positive integers, got {value!r}") from None
    if not items or min(items) < 1:
        raise click.BadParameter(f"expected comma-separated positive integers, got {value!r}")
    return items


@click.command()
@click.option("--model", default="ViT-B-16", show_default=True, metavar="NAME",
              help="open_clip architecture, or anything `locate --model` takes.")
@click.option("--pretrained", default=None, metavar="TAG|PATH",
              help="Weights; default random (speed does not depend on the weights).")
@click.option("--model-config", type=click.Path(dir_okay=False), default=None, metavar="JSON",
              help="open_clip model config for a custom architecture.")
@click.option("--backend", type=click.Choice(list_backends()), default="open_clip", show_default=True)
@click.option("--sizes", default="224,448", show_default=True, callback=_int_list, help="Image sizes.")
@click.option("--ks", default="1,4,16,64", show_default=True, callback=_int_list,
              help="Concept counts K per call.")
@click.option("--batches", default=None, callback=_int_list, show_default="1 on CPU, 1,8 on CUDA",
              help="Images per call B.")
@click.option("--rounds", type=click.IntRange(min=1), default=None, show_default="3 on CPU, 10 on CUDA",
              help="Timed rounds (after one warm-up round); medians are reported.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--gradcam-calls", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="pytorch-grad-cam calls timed per round and (size, B); its time for K concepts is the "
                   "per-concept median x K, marked extrapolated.")
@click.option("--gradcam-full", is_flag=True, help="Time all K pytorch-grad-cam calls (slow on CPU: ~7 s each at 224).")
@click.option("--no-gradcam", is_flag=True, help="Skip pytorch-grad-cam.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory measurement.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads (default: torch's).")
@click.option("--references", type=click.IntRange(min=1), default=3, show_default=True,
              help="Explicit references per concept.")
@json_option("every figure and raw sample")
@click.option("--report", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also write every figure and raw sample to FILE (JSON).")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
@kernel_option
def bench(model, pretrained, model_config, backend, sizes, ks, batches, rounds, device, gradcam_calls, gradcam_full,
          no_gradcam, no_memory, threads, references, as_json, report, quiet, kernel):
    """Time maps for K concepts against one plain forward and pytorch-grad-cam, interleaved.

    ViT-B-16 with random weights by default. Methods: the plain image tower (the floor), ours
    (locate_many, text warm), pytorch-grad-cam FinerCAM one call per concept, new prompts on
    cached image features with warm text and with their text encoding. Prints a table and
    whether the targets are met. On 2 idle CPU cores the default grid (sizes 224,448,
    K 1,4,16,64, B 1, 3 rounds, memory in child processes) takes about 5 minutes; other busy
    processes make it slower and distort multi-threaded timings (the table says how busy).
    """
    from ..bench.run import BenchConfig, run_benchmark
    from ..bench.report import format_table, write_json
    from ..io.files import json_bytes
    from ..errors import UsageError

    as_json, path = report_path(as_json, report)

    cfg = BenchConfig(model=model, pretrained=pretrained, model_config=model_config, backend=backend, sizes=sizes,
                      ks=ks, batches=batches, rounds=rounds, device=device, gradcam=not no_gradcam,
                      gradcam_calls=gradcam_calls, gradcam_full=gradcam_full, memory=not no_memory,
                      threads=threads, references=references, kernel=kernel)
    try:
        result = run_benchmark(cfg, log=None if quiet else (lambda message: click.echo(message, err=True)))
    except UsageError as err:  # e.g. --device cuda without CUDA; also when run as a script
        raise click.UsageError(str(err)) from None
    click.echo(json_bytes(result).decode() if as_json else format_table(result))
    if path:
        write_json(result, path)
        click.echo(f"wrote {path}", err=True)
