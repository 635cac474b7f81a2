"""Causal-LM commands: sft, generate, chat, lm merge, lm serve, models import-gguf."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tunelab.cli._app import app, command, console, err_console, user_errors
from tunelab.cli.core import models_app

if TYPE_CHECKING:
    from tunelab.run import Run

lm_app = typer.Typer(no_args_is_help=True, help="Causal language models: merge LoRA adapters, serve with an OpenAI-compatible API.")
app.add_typer(lm_app, name="lm")

ModelArg = Annotated[str, typer.Argument(help="sft run directory, model or adapter folder, or catalogue name (e.g. smollm2)")]
MaxNew = Annotated[int, typer.Option("--max-new-tokens", help="tokens to generate at most")]
Temperature = Annotated[float, typer.Option(help="0 = greedy (reproducible); e.g. 0.7 to sample")]
TopP = Annotated[float, typer.Option("--top-p", help="nucleus sampling (with --temperature > 0)")]
Precision = Annotated[str, typer.Option(help="auto | fp32 | bf16 (autocast)")]


@command("sft")
def sft(
    config: Annotated[Path | None, typer.Argument(help="YAML config file; flags override its values")] = None,
    model: Annotated[str | None, typer.Option(help="causal LM: catalogue name (smollm2), imported GGUF name or folder")] = None,
    data: Annotated[str | None, typer.Option(help="JSONL/JSON/CSV with {prompt,response}, {messages} or {text} rows")] = None,
    format: Annotated[str | None, typer.Option(help="auto | prompt-response | messages | text")] = None,
    eval_data: Annotated[str | None, typer.Option(help="evaluation file (else 10% held out)")] = None,
    full: Annotated[bool, typer.Option("--full", help="full fine-tuning instead of LoRA")] = False,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank")] = None,
    lora_alpha: Annotated[int | None, typer.Option()] = None,
    lora_dropout: Annotated[float | None, typer.Option()] = None,
    target_modules: Annotated[str | None, typer.Option(help="comma-separated module names, or all-linear")] = None,
    epochs: Annotated[float | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate (default 2e-4 LoRA, 2e-5 full)")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    grad_accum: Annotated[int | None, typer.Option()] = None,
    max_length: Annotated[int | None, typer.Option(help="tokens per example (default: the longest, capped at 1024)")] = None,
    packing: Annotated[bool | None, typer.Option("--packing", help="padding-free batches: examples concatenated, attention kept apart")] = None,
    activation_checkpointing: Annotated[
        bool | None, typer.Option("--activation-checkpointing", help="recompute activations in backward: much less memory for long prompts, ~1/3 more time")
    ] = None,
    precision: Annotated[str | None, typer.Option(help="auto | fp32 | bf16")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    max_train_samples: Annotated[int | None, typer.Option()] = None,
    samples: Annotated[int | None, typer.Option(help="eval prompts generated before/after for the report")] = None,
    out: Annotated[str | None, typer.Option(help="run directory")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="replace an existing run")] = None,
) -> None:
    """Supervised fine-tuning of a causal LM (LoRA by default) on instruction data; writes a run directory."""
    from tunelab.config import load_settings
    from tunelab.lm.config import SFTConfig
    from tunelab.lm.sft import sft as run_sft

    overrides = {k: v for k, v in locals().items() if k not in ("config", "full", "load_settings", "SFTConfig", "run_sft")}
    if full:
        overrides["method"] = "full"
    if data is None and config is None:
        from tunelab.errors import TunelabError

        raise TunelabError("no training data given", "pass --data FILE (JSONL/JSON/CSV with prompt/response, messages or text rows)")
    settings = load_settings(SFTConfig, config, overrides)
    run = run_sft(settings)
    _print_sft_summary(run)


def _print_sft_summary(run: Run) -> None:
    before, after, train = run.metrics["eval_before"], run.metrics["eval_after"], run.metrics["train"]
    console.print(f"[bold green]done[/] {run.path}")
    console.print(f"eval loss {before['loss']:.4f} -> {after['loss']:.4f}   perplexity {before['perplexity']:.2f} -> {after['perplexity']:.2f}")
    console.print(
        f"{train['method']}: {train['trainable_parameters']:,} of {train['parameters']:,} parameters trained, "
        f"{train['train_runtime_s']:.1f}s, {train['train_tokens_per_second']:.0f} tokens/s"
    )
    console.print(f'report: {run.path / "report.html"}   next: tunelab generate {run.path} "..."   tunelab lm merge {run.path}')


@command("generate")
def generate(
    model: ModelArg,
    prompt: Annotated[str, typer.Argument(help="the prompt (a user message for chat models; '-' reads stdin)")],
    max_new_tokens: MaxNew = 256,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    system: Annotated[str | None, typer.Option(help="system message")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for sampling")] = None,
    precision: Precision = "auto",
) -> None:
    """Generate an answer, streaming tokens as they come (greedy by default)."""
    from tunelab.lm.generate import Generator

    text = sys.stdin.read() if prompt == "-" else prompt
    generator = Generator(model, precision=precision)
    stream = generator.stream(text, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, system=system)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    done = stream.completion
    err_console.print(f"[dim]{done.completion_tokens} tokens, {done.tokens_per_second:.1f} tokens/s, finish: {done.finish_reason}[/]")


@command("chat")
def chat(
    model: ModelArg,
    system: Annotated[str | None, typer.Option(help="system message")] = None,
    max_new_tokens: MaxNew = 256,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    precision: Precision = "auto",
) -> None:
    """Chat interactively; the conversation is kept. /reset forgets it, /exit (or Ctrl-D) leaves."""
    from tunelab.lm.generate import Generator

    session = Generator(model, precision=precision).chat(system)
    console.print("[dim]chatting; /reset forgets the conversation, /exit leaves[/]")
    while True:
        try:
            line = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            session.reset()
            continue
        if not line.strip():
            continue
        console.print("[bold magenta]model>[/] ", end="")
        for piece in session.send(line, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


@lm_app.command("merge")
@user_errors
def merge(
    run: Annotated[str, typer.Argument(help="sft run directory (LoRA) or adapter folder")],
    out: Annotated[str | None, typer.Option(help="where to write the merged model (default: RUN/merged)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Fold a LoRA adapter into its base model; checks merged == adapter and != base."""
    import json

    from tunelab.lm.merge import merge as run_merge

    folder = run_merge(run, out, overwrite)
    check = json.loads((folder / "merge_check.json").read_text(encoding="utf-8"))
    console.print(f"[bold green]merged[/] {folder}")
    console.print(
        f"check: max logit difference vs adapter {check['max_abs_logit_diff_vs_adapter']:.2e} (must be ~0), "
        f"vs base {check['max_abs_logit_diff_vs_base']:.3g} (must be > 0)"
    )


@lm_app.command("serve")
@user_errors
def serve(
    model: ModelArg,
    host: Annotated[str, typer.Option(help="address to bind (default: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    name: Annotated[str | None, typer.Option(help="model id clients send (default: the folder name)")] = None,
    max_tokens: Annotated[int, typer.Option(help="max_tokens a request may ask for")] = 1024,
    max_body_bytes: Annotated[int, typer.Option(help="larger request bodies get 413")] = 1_000_000,
    precision: Precision = "auto",
) -> None:
    """Serve a causal LM with an OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models).

    Set TUNELAB_API_KEY to require 'Authorization: Bearer KEY' (or 'X-API-Key: KEY').
    """
    from tunelab.serve.openai import Limits, serve_lm

    serve_lm(model, host=host, port=port, model_name=name, limits=Limits(max_tokens=max_tokens, max_body_bytes=max_body_bytes), precision=precision)


@models_app.command("import-gguf")
@user_errors
def import_gguf(
    file: Annotated[Path, typer.Argument(help="a .gguf file (llama.cpp)")],
    name: Annotated[str, typer.Option(help="name to use it by, e.g. with --model")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a model of that name")] = False,
) -> None:
    """Convert a GGUF file once into a Hugging Face folder in tunelab's cache (checked: same greedy output)."""
    import json

    from tunelab.models.cache import RECORD
    from tunelab.models.gguf import import_gguf as run_import

    folder = run_import(file, name, overwrite=overwrite)
    record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    console.print(f"[bold green]imported[/] {name} -> {folder}")
    if "check" in record:
        console.print(f"check: converted model generates the same greedy text as the GGUF model: {record['check']['greedy_output']!r}")
    console.print(f'use it: tunelab sft --model {name} --data FILE   tunelab generate {name} "..."')
