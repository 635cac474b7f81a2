"""`tunelab serve` (HTTP prediction service) and `tunelab export` (ONNX, int8)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from tunelab.backends import CHOICES_HELP
from tunelab.cli._app import command, console


class FormatChoice(StrEnum):
    onnx = "onnx"


class QuantizeChoice(StrEnum):
    int8 = "int8"


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
    max_wait_ms: Annotated[float, typer.Option(help="how long a batch waits for more requests")] = 2.0,
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
    run: Annotated[Path, typer.Argument(help="run directory")],
    format: Annotated[FormatChoice, typer.Option("--format", help="export format")] = FormatChoice.onnx,
    quantize: Annotated[QuantizeChoice | None, typer.Option(help="also write a dynamically quantized model")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the parity report as JSON")] = False,
) -> None:
    """Write ONNX models into RUN/onnx/ and check them against PyTorch on the run's test split."""
    from tunelab.runtime.export import INT8_MIN_AGREEMENT, export_onnx

    with console.status("exporting") as status:
        report = export_onnx(run, quantize.value if quantize else None, step=lambda message: status.update(message))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    console.print(f"fp32  {report.files['onnx']}  ({report.sizes_mb['onnx']} MB)", highlight=False, soft_wrap=True)
    from tunelab.run import Run

    task = Run.open(run).task
    if task == "token-classification":  # a tagger's parity compares each word's tag and tag probabilities
        agreed, differs = "word tags the same", "max |word tag probability diff|"
        measured = f"on {report.rows} test sentences: {differs} vs PyTorch {report.fp32_max_abs_diff:.2e}; {agreed} {report.fp32_argmax_agreement:.2%}"
    else:
        agreed = "label sets the same" if task == "multi-label" else "argmax agreement"  # a multi-label run's parity compares label sets after its thresholds
        differs = "max |logit diff|"
        measured = f"{differs} vs PyTorch on {report.rows} test texts: {report.fp32_max_abs_diff:.2e}; {agreed} {report.fp32_argmax_agreement:.2%}"
    console.print(f"      {measured}", highlight=False, soft_wrap=True)
    if report.int8_argmax_agreement is not None:
        console.print(f"int8  {report.files['onnx-int8']}  ({report.sizes_mb['onnx-int8']} MB)", highlight=False, soft_wrap=True)
        console.print(
            f"      {agreed} {report.int8_argmax_agreement:.2%} (gate {INT8_MIN_AGREEMENT:.1%}); {differs} {report.int8_max_abs_diff:.2e}",
            highlight=False,
            soft_wrap=True,
        )
    backend = "onnx-int8" if report.int8_argmax_agreement is not None else "onnx"
    console.print(f"serve it: tunelab serve {run} --backend {backend}", highlight=False, soft_wrap=True)
