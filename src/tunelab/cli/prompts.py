"""`tunelab prompts ...` (list, show, eval) and `tunelab strategies`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunelab.cli._app import app, command, console, user_errors

prompts_app = typer.Typer(no_args_is_help=True, help="Prompt templates: list, show, and score them on a QA file.")
app.add_typer(prompts_app, name="prompts")


@prompts_app.command("list")
@user_errors
def list_cmd() -> None:
    """The shipped templates."""
    from tunelab.prompts import load_template, shipped_names

    table = Table("name", "version", "needs", "description")
    for name in shipped_names():
        t = load_template(name)
        table.add_row(t.name, t.version, ", ".join(t.requires) or "-", t.description)
    console.print(table)


@prompts_app.command("show")
@user_errors
def show_cmd(template: Annotated[str, typer.Argument(help="shipped template name or a YAML file")]) -> None:
    """Print a template's text."""
    from tunelab.prompts import load_template

    t = load_template(template)
    console.print(f"[bold]{t.id}[/bold]  {t.description}")
    console.print(t.template, markup=False, highlight=False)


@prompts_app.command("eval")
@user_errors
def eval_cmd(
    templates: Annotated[list[str], typer.Argument(help="template names or YAML files")],
    qa: Annotated[Path, typer.Option("--qa", help="QA JSONL: question, answer, aliases")],
    model: Annotated[str, typer.Option("--model", help="causal LM: catalogue name, folder or sft run")] = "smollm2",
    index: Annotated[
        str | None, typer.Option("--index", help="index folder, or 'factbook' for the built-in one, for templates that need retrieved context")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="only the first N questions")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 24,
    decoding: Annotated[
        str, typer.Option("--decoding", help="free, or grounded: each answer copied from the retrieved passages or 'I don't know' (needs --index)")
    ] = "free",
    batch_size: Annotated[int, typer.Option("--batch-size", help="questions generated together (left padding)")] = 8,
    out: Annotated[Path | None, typer.Option("--out", help="write the full JSON (with every answer) here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of the table")] = False,
) -> None:
    """Score templates: exact match, contains-answer, token F1, abstention, hallucination, latency."""
    from tunelab import atomic
    from tunelab.prompts.evaluate import evaluate_templates

    if index is not None:
        from tunelab.rag.builtin import resolve_index

        index = resolve_index(index, progress=not as_json)  # 'factbook': the one built-in index, built once
    result = evaluate_templates(
        templates, qa, model, index=index, limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size, decoding=decoding, progress=not as_json
    )
    if out is not None:
        atomic.write_json(out, result)
    brief = [{"template": t["template"], **{k: v for k, v in t["summary"].items()}, "latency": t["latency"]} for t in result["templates"]]
    if as_json:
        print(json.dumps({"questions": result["questions"], "model": result["model"], "decoding": result["decoding"], "templates": brief}, indent=2))
        return
    table = Table(
        "template",
        "EM",
        "contains",
        "F1",
        "abstained",
        "halluc. (answered)",
        "halluc. (all)",
        "latency p50",
        "p95",
        title=f"{result['questions']} questions, {result['model']}, {result['decoding']} decoding",
    )
    for t in brief:
        table.add_row(
            t["template"],
            f"{t['exact_match']:.3f}",
            f"{t['contains']:.3f}",
            f"{t['f1']:.3f}",
            f"{t['abstention_rate']:.3f}",
            f"{t['hallucination_rate_answered']:.3f}",
            f"{t['hallucination_rate_all']:.3f}",
            f"{t['latency']['p50_ms']:.0f} ms",
            f"{t['latency']['p95_ms']:.0f} ms",
        )
    console.print(table)


@command("strategies")
def strategies_cmd(
    qa: Annotated[
        Path | None, typer.Option("--qa", help="folder with train.jsonl and test.jsonl (tunelab data factbook-qa); default: the built-in Factbook QA set")
    ] = None,
    kb: Annotated[str | None, typer.Option("--kb", help="knowledge base: folder of documents, 'factbook' (built-in, the default), or an index folder")] = None,
    model: Annotated[str | None, typer.Option("--model", help="causal LM: catalogue name or folder (default smollm2)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output folder (default strategies-report)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML with more settings (StrategiesConfig)")] = None,
    test_questions: Annotated[int | None, typer.Option("--test-questions", help="held-out questions (default 200)")] = None,
    train_pairs: Annotated[int | None, typer.Option("--train-pairs", help="SFT pairs (default 300)")] = None,
    embed_model: Annotated[str | None, typer.Option("--embed-model", help="embedding model (default minilm)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="a few questions, short training: a fast end-to-end check")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output folder")] = False,
) -> None:
    """Closed-book, best prompt, RAG, fine-tuned, fine-tuned + RAG and extractive reader + RAG on the same questions: report.html, results.json."""
    from tunelab.config import load_settings
    from tunelab.strategies import StrategiesConfig, run_strategies

    # Flags left out keep the --config file's value (or the default), so only given flags are overrides.
    overrides = {
        "qa": str(qa) if qa is not None else None,
        "kb": kb,
        "model": model,
        "out": str(out) if out is not None else None,
        "test_questions": test_questions,
        "train_pairs": train_pairs,
        "embed_model": embed_model,
    }
    overrides.update({k: True for k, v in {"quick": quick, "overwrite": overwrite}.items() if v})
    settings = load_settings(StrategiesConfig, config, overrides)
    results = run_strategies(settings)
    from tunelab.strategies.report import comparison_markdown

    console.print(comparison_markdown(results), markup=False, highlight=False)
    console.print(f"wrote {settings.out}/report.html, results.json, comparison.md, accuracy_vs_cost.png")
