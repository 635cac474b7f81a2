"""`tunelab eval`: evaluate a run on its test split or other labelled data; write metrics, plots, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tunelab.backends import CHOICES_HELP
from tunelab.cli._app import command, console
from tunelab.errors import TunelabError


@command("eval")
def eval_command(
    run: Annotated[Path, typer.Argument(help="Run directory written by `tunelab train`.", show_default=False)],
    pairs_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="[PAIRS_FILE]",
            help="With --bias: a file of extra term pairs, one per line ('he,she'; '\\[list name]' starts a list).",
            show_default=False,
        ),
    ] = None,
    data: Annotated[str | None, typer.Option("--data", help="Evaluate on this source (file or built-in name) instead of the test split.")] = None,
    text_col: Annotated[str, typer.Option("--text-col", help="Text column of --data.")] = "text",
    text_pair_col: Annotated[
        str | None, typer.Option("--text-pair-col", help="Pair-classification runs: the second text's column of --data (default: the run's).")
    ] = None,
    label_col: Annotated[str | None, typer.Option("--label-col", help="Label column of --data (default: label; a multi-label run's own label column).")] = None,
    label_sep: Annotated[
        str | None, typer.Option("--label-sep", help="Multi-label runs: the character between labels in --data's label column (default: the run's).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the artefacts here (default: the run directory).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON (for scripts).")] = False,
    bias: Annotated[bool, typer.Option("--bias", help="Probe for bias: swap he/she, male/female names, ... and count flipped predictions.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Texts per inference batch.")] = 64,
    backend: Annotated[str, typer.Option("--backend", help=CHOICES_HELP)] = "torch",
    baseline: Annotated[
        bool | None,
        typer.Option(
            "--baseline/--no-baseline",
            help="Fit TF-IDF + logistic regression on the run's train split and say whether the "
            "model beats it on the same rows (default: the run's `baseline` setting, on).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Evaluate a run: metrics.json, predictions.parquet, plots/ and a self-contained report.html."""
    from tunelab.evaluation import evaluate_run

    if pairs_file is not None and not bias:
        raise TunelabError(f"unexpected argument '{pairs_file}'", "a pairs file goes after --bias: tunelab eval RUN --bias PAIRS_FILE")
    from tunelab.run import Run

    opened = Run.open(run)
    multilabel = opened.task == "multi-label"
    if label_sep is not None and not multilabel:
        raise TunelabError("--label-sep applies only to multi-label runs", "drop it")
    if text_pair_col is not None and not opened.is_pair_classifier:
        raise TunelabError("--text-pair-col applies only to pair-classification runs", "drop it")
    if opened.is_pair_classifier:
        text_pair_col = text_pair_col or opened.config.get("text_pair_col") or "text_pair"
    frame = None
    if data is not None and opened.task == "token-classification":
        frame = data  # read by evaluate_run with the run's columns and IOB rule
    elif data is not None and multilabel:
        from tunelab.data.multilabel import load_multilabel_source

        frame = load_multilabel_source(data, text_col, label_col or opened.config.get("label_col", "labels"), label_sep or opened.config.get("label_sep"))
    elif data is not None:
        from tunelab.data import load_source

        frame = load_source(data, text_col=text_col, label_col=label_col or "label", text_pair_col=text_pair_col)
    metrics = evaluate_run(
        run,
        data=frame,
        out_dir=out,
        bias=pairs_file if (bias and pairs_file is not None) else bias,
        data_name=data,
        batch_size=batch_size,
        progress=not json_output,
        baseline=baseline,
        backend=backend,
    )
    if json_output:
        # Plain print: rich would wrap long lines and colour the JSON.
        print(json.dumps(metrics, indent=2, default=_jsonable))
        return
    if multilabel:
        print_multilabel_summary(metrics, out if out is not None else Path(run))
    elif opened.task == "token-classification":
        print_token_summary(metrics, out if out is not None else Path(run))
    else:
        _print_summary(metrics, out if out is not None else Path(run))


def print_multilabel_summary(metrics: dict[str, Any], out: Path) -> None:
    test = metrics["test"]
    table = scores_table(metrics, ("label", "threshold", "precision", "recall", "F1", "support", "ROC AUC"))
    for label, row in test["per_label"].items():
        table.add_row(label, f"{row['threshold']:.3f}", *score_cells(row, row["roc_auc"]))
    for average in ("micro", "macro", "samples"):
        table.add_row(f"{average} avg", "", *score_cells(test[average], test["roc_auc"].get(average), support=False, no_auc=""), style="bold")
    console.print(table)
    line = f"subset accuracy {test['subset_accuracy']:.1%} · Hamming loss {test['hamming_loss']:.3f} · F1 micro {test['f1_micro']:.3f} · macro {test['f1_macro']:.3f} · samples {test['f1_samples']:.3f}"
    console.print(line + speed(test), highlight=False)
    thresholds = metrics.get("thresholds") or {}
    if thresholds:
        console.print(f"[dim]thresholds chosen on {thresholds['chosen_on']}[/]", highlight=False)
    print_baseline(metrics)
    console.print(f"report: {out / 'report.html'}", highlight=False, soft_wrap=True)


def print_token_summary(metrics: dict[str, Any], out: Path) -> None:
    test = metrics["test"]
    table = Table(title=f"{metrics['evaluated_on']['source']} ({test['n']} sentences, {test['words']} words) — entities, seqeval")
    for column in ("type", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "type" else "right")
    for kind, row in test["per_type"].items():
        table.add_row(kind, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    table.add_row("micro avg", f"{test['precision_micro']:.3f}", f"{test['recall_micro']:.3f}", f"{test['f1_micro']:.3f}", str(test["entities"]), style="bold")
    console.print(table)
    console.print(f"entity macro-F1 {test['f1_macro']:.3f} · word accuracy {test['word_accuracy']:.1%}", highlight=False)
    print_baseline(metrics)
    console.print(f"report: {out / 'report.html'}", highlight=False, soft_wrap=True)


def scores_table(metrics: dict[str, Any], columns: tuple[str, ...]) -> Table:
    """The per-class (or per-label) table of an evaluation, titled with what it was evaluated on."""
    table = Table(title=f"{metrics['evaluated_on']['source']} ({metrics['test']['n']} examples)")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


def score_cells(row: dict[str, Any], auc: float | None, support: bool = True, no_auc: str = "n/a") -> list[str]:
    """precision, recall, F1, support and ROC AUC of one row of the table."""
    return [
        f"{row['precision']:.3f}",
        f"{row['recall']:.3f}",
        f"{row['f1']:.3f}",
        str(row["support"]) if support else "",
        no_auc if auc is None else f"{auc:.3f}",
    ]


def speed(test: dict[str, Any]) -> str:
    examples_per_second = (test.get("timing") or {}).get("examples_per_second")
    return f" · {examples_per_second:.1f} examples/s" if examples_per_second else ""


def _print_summary(metrics: dict[str, Any], out: Path) -> None:
    test = metrics["test"]
    table = scores_table(metrics, ("class", "precision", "recall", "F1", "support", "ROC AUC"))
    for label, row in test["per_class"].items():
        table.add_row(label, *score_cells(row, test["roc_auc"]["per_class"][label]))
    for average in ("macro", "weighted"):
        table.add_row(f"{average} avg", *score_cells(test[average], test["roc_auc"]["macro"] if average == "macro" else None, no_auc=""), style="bold")
    console.print(table)
    line = f"accuracy {test['accuracy']:.1%} · loss {test['loss']:.4f} · F1 macro {test['f1_macro']:.3f} · ECE {test['ece']:.3f}"
    if "top_2_accuracy" in test:
        line += f" · top-2 {test['top_2_accuracy']:.1%}"
    line += speed(test)
    console.print(line, highlight=False)
    for reason in {**test["roc_auc"]["undefined"]}.values():
        console.print(f"[dim]{reason}[/]", highlight=False)
    check = metrics.get("generalisation", {})
    if check.get("verdict") == "overfitting":
        console.print("[yellow]possible over-fitting:[/] " + "; ".join(check["reasons"]), highlight=False)
    for name, entry in (metrics.get("bias") or {}).get("lists", {}).items():
        rate = entry.get("flip_rate")
        console.print(
            f"bias probe '{name}': "
            + (
                f"{entry['flipped']}/{entry['texts_probed']} predictions flip ({rate:.1%}), mean probability shift {entry['mean_abs_shift']:.3f}"
                if rate is not None
                else entry.get("reason", "")
            ),
            highlight=False,
        )
    print_baseline(metrics)
    console.print(f"report: {out / 'report.html'}", highlight=False, soft_wrap=True)


def print_baseline(metrics: dict[str, Any]) -> None:
    """The baseline headline of metrics.json (the report's own sentence) and what to try."""
    baseline = metrics.get("baseline")
    if not baseline:
        return
    if "comparison" not in baseline:
        console.print(f"[dim]no baseline comparison: {baseline.get('missing', 'not run')}[/]", highlight=False, soft_wrap=True)
        return
    from rich.markup import escape

    comparison = baseline["comparison"]
    colour = "green" if comparison["beats_baseline"] else "yellow"
    console.print(f"[{colour}]{escape(comparison['headline'])}[/]", highlight=False, soft_wrap=True)
    for tip in comparison["advice"]:
        console.print(f"  try: {escape(tip)}", highlight=False, soft_wrap=True)


def _jsonable(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)
