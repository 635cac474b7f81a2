"""`tunelab serve` (HTTP prediction service) and `tunelab export` (ONNX or OpenVINO, int8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tunelab.backends import CHOICES_HELP
from tunelab.cli._app import command, console

# `tunelab export --format`: the files the backends of that name run (with `--quantize int8`, their int8 one too).
EXPORT_FORMATS = ("onnx", "openvino")


@command("serve")
def serve(
    run: Annotated[str, typer.Argument(help="run directory of a fine-tuned classifier, a causal LM, or a registry model name")],
    host: Annotated[str, typer.Option(help="address to bind (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    backend: Annotated[str, typer.Option(help=CHOICES_HELP)] = "torch",  # checked by ServeSettings: one line, not a usage screen
    workers: Annotated[
        int, typer.Option(help="uvicorn worker processes (each loads the model; the cores are shared out between them; one /metrics view of all)")
    ] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads per forward pass (default: the cores, divided among the workers)")] = None,
    max_batch: Annotated[int, typer.Option(help="texts per forward pass at most")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(help="how long a batch waits for more requests while they come concurrently; a lone request is scored at once")
    ] = 2.0,
    max_queue: Annotated[int, typer.Option(help="texts waiting at most; then 503 + Retry-After")] = 512,
    max_texts: Annotated[int, typer.Option(help="texts per request at most; then 422")] = 64,
    max_body_bytes: Annotated[int, typer.Option(help="request body size at most; then 413")] = 1_000_000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    registry: Annotated[str | None, typer.Option(help="registry file, when RUN is a registry name (default: $TUNELAB_REGISTRY)")] = None,
) -> None:
    """Serve a run over HTTP: POST /v1/predict, a web page at /, /docs, /metrics. Set TUNELAB_API_KEY to require a key."""
    from tunelab.config import load_settings
    from tunelab.serve.app import serve as run_service
    from tunelab.serve.settings import ServeSettings

    settings = load_settings(
        ServeSettings,
        None,
        dict(
            host=host,
            port=port,
            backend=backend,
            workers=workers,
            threads=threads,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            max_texts=max_texts,
            max_body_bytes=max_body_bytes,
            log_level=log_level,
        ),
    )
    from tunelab.models.catalogue import CATALOGUE

    looks_like_path = "/" in run or "\\" in run or run.startswith((".", "~"))
    if not Path(run).exists() and run not in CATALOGUE and not looks_like_path:
        # Not a folder: a registry name. Its production version is served, and a promotion swaps it live.
        from tunelab.serve.registry_watch import serve_registry

        serve_registry(run, settings, registry)
        return
    from tunelab.serve.app import check_servable, is_causal_lm

    page = "web page: /, "
    if not is_causal_lm(run):
        served = check_servable(run, settings.backend)  # a run it cannot serve is refused before the banner
        if served.task in ("multi-label", "token-classification"):  # the web page shows one class per text: not served for these
            page = ""
    console.print(f"serving {run} on http://{settings.host}:{settings.port}  ({page}API docs: /docs)", highlight=False, soft_wrap=True)
    run_service(run, settings)


@command("export")
def export(
    run: Annotated[Path, typer.Argument(help="run directory of a classifier, pair, multi-label or token-classification run")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="onnx (ONNX Runtime's model.onnx) or openvino (that model.onnx, which OpenVINO compiles, checked in OpenVINO; needs the openvino extra)",
        ),
    ] = "onnx",
    quantize: Annotated[
        str | None, typer.Option(help="int8: also write an int8 model (onnx: ONNX Runtime's dynamic int8; openvino: NNCF's static int8, OpenVINO IR)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the parity report as JSON")] = False,
) -> None:
    """Write the models of a backend into RUN/onnx/ and check them against PyTorch on the run's test split (nothing is written if one fails)."""
    from tunelab.errors import TunelabError, did_you_mean
    from tunelab.run import Run
    from tunelab.runtime.export import INT8_MIN_AGREEMENT, export_onnx
    from tunelab.runtime.openvino_export import export_openvino

    if format not in EXPORT_FORMATS:
        raise TunelabError(
            f"unknown export format '{format}'", " ".join(filter(None, ["use --format onnx or --format openvino", did_you_mean(format, EXPORT_FORMATS)]))
        )
    with console.status("exporting") as status:
        if format == "openvino":
            parity = export_openvino(run, quantize, step=lambda message: status.update(message))
        else:
            parity = export_onnx(run, quantize, step=lambda message: status.update(message)).to_dict()
    if as_json:
        print(json.dumps(parity, indent=2))
        return
    console.print(f"fp32  {parity['files']['onnx']}  ({parity['sizes_mb']['onnx']} MB)", highlight=False, soft_wrap=True)
    task = Run.open(run).task
    if task == "token-classification":  # a tagger's parity compares each word's tag and tag probabilities
        agreed, differs, rows = "word tags the same", "max |word tag probability diff|", "test sentences"
    else:  # a multi-label run's parity compares label sets after its thresholds
        agreed, differs, rows = ("label sets the same" if task == "multi-label" else "argmax agreement"), "max |logit diff|", "test texts"
    say = lambda line: console.print(line, highlight=False, soft_wrap=True)  # noqa: E731
    say(f"      on {parity['rows']} {rows}: {differs} vs PyTorch {parity['fp32_max_abs_diff']:.2e}; {agreed} {parity['fp32_argmax_agreement']:.2%}")
    served = "onnx"
    if parity.get("int8_argmax_agreement") is not None:
        served = "onnx-int8"
        say(f"int8  {parity['files']['onnx-int8']}  ({parity['sizes_mb']['onnx-int8']} MB)")
        say(f"      {agreed} {parity['int8_argmax_agreement']:.2%} (gate {INT8_MIN_AGREEMENT:.1%}); {differs} {parity['int8_max_abs_diff']:.2e}")
        say_fallback(parity, agreed, say)
    for backend in ("openvino", "openvino-int8"):
        if backend in parity:
            served, figures = backend, parity[backend]
            file = f"{figures['file']} and its .bin ({figures['size_mb']} MB), NNCF's int8" if "file" in figures else "model.onnx, compiled by OpenVINO"
            say(f"{backend}  {file}")
            say(f"      {agreed} {figures['argmax_agreement']:.2%} (gate {INT8_MIN_AGREEMENT:.1%}); {differs} {figures['max_abs_diff']:.2e}")
            say_fallback(figures, agreed, say)
    say(f"serve it: tunelab serve {run} --backend {served}")


def say_fallback(figures: dict, agreed: str, say) -> None:
    """An int8 backend's fp32 fallback, when its gate chose one: the figure above is int8 as served, with it."""
    if figures.get("fp32_fallback_margin") is not None:
        say(
            f"      with near ties (top-two gap <= {figures['fp32_fallback_margin']:.3f}, chosen on {figures['fp32_fallback_chosen_on']}) "
            f"scored again in fp32: {figures['fp32_fallback_share']:.2%} of test texts; int8 alone: {agreed} {figures['int8_only_argmax_agreement']:.2%}"
        )
