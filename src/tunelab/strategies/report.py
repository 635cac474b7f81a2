"""The comparison's outputs: comparison.md (the guide's table with measured numbers),
accuracy_vs_cost.png, and a self-contained report.html (plot embedded)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from tunelab import atomic

LABELS = {
    "closed-book": "Closed-book (plain prompt)",
    "best-prompt": "Prompt engineering (best template)",
    "rag": "RAG (hybrid retrieval)",
    "fine-tuned": "Fine-tuned (LoRA SFT)",
    "fine-tuned+rag": "Fine-tuned + RAG (generative reader)",
    "extractive+rag": "Extractive reader + RAG",
}
GUIDE_SAYS = {
    "closed-book": "baseline",
    "best-prompt": "cheapest, least accurate; changes style more than knowledge",
    "rag": "balances accuracy and cost; depends on what the database holds",
    "fine-tuned": "most accurate, costs the most; adapts best to a specific task",
    "fine-tuned+rag": "(combination)",
    "extractive+rag": "(not in the guide: a fine-tuned encoder that can only quote its sources)",
}


def _pct(value, ci=None) -> str:
    if value is None:
        return "—"
    text = f"{100 * value:.1f}%"
    if ci and None not in ci and ci[0] == ci[0]:
        text += f" [{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]"
    return text


def _num(value, unit: str = "", digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}{unit}"


def comparison_rows(results: dict) -> list[dict]:
    adapt = results.get("adaptability", {}).get("strategies", {})
    rows = []
    for name, s in results.get("strategies", {}).items():
        a = adapt.get(name, {})
        if a:
            cost = (
                f"re-index {a['update_seconds']:.1f} s"
                if a.get("update_seconds") is not None
                else (f"retrain (~{a['retraining_estimate_seconds']:.0f} s SFT)" if a.get("retraining_estimate_seconds") else "retrain")
            )
            adapts = f"{'yes' if a['picks_up_without_retraining'] else 'no'}: {_pct(a['contains'])} new facts right, {_pct(a['stale_rate'])} stale; {cost}"
        else:
            adapts = "—"
        rows.append(
            {
                "strategy": LABELS.get(name, name),
                "contains": _pct(s.get("contains"), s.get("contains_ci95")),
                "exact_match": _pct(s.get("exact_match"), s.get("exact_match_ci95")),
                "f1": _pct(s.get("f1"), s.get("f1_ci95")),
                "hallucination": f"{_pct(s.get('hallucination_rate_all'))} (of answered {_pct(s.get('hallucination_rate_answered'))})",
                "abstention": _pct(s.get("abstention_rate")),
                "relevance": _num(s.get("answer_relevance"), digits=2),
                "setup": _num(s.get("setup_seconds"), " s", 1),
                "latency": _num((s.get("latency") or {}).get("mean_ms"), " ms"),
                "memory": _num(s.get("peak_memory_mb"), " MB"),
                "disk": _num(s.get("disk_mb"), " MB", 1),
                "adapts": adapts,
                "guide": GUIDE_SAYS.get(name, ""),
            }
        )
    return rows


COLUMNS = [
    ("strategy", "Strategy"),
    ("contains", "Contains-answer [95% CI]"),
    ("exact_match", "Exact match [95% CI]"),
    ("f1", "Token F1 [95% CI]"),
    ("hallucination", "Hallucination rate (all / answered)"),
    ("abstention", "Abstained"),
    ("relevance", "Answer relevance"),
    ("setup", "Set-up cost"),
    ("latency", "Latency / question"),
    ("memory", "Peak memory (RSS)"),
    ("disk", "Disk"),
    ("adapts", "New knowledge without retraining"),
    ("guide", "The guide says"),
]


def comparison_markdown(results: dict) -> str:
    rows = comparison_rows(results)
    table = markdown_table([title for _, title in COLUMNS], ([r[key] for key, _ in COLUMNS] for r in rows))
    q = results.get("questions", {})
    env = results.get("environment", {})
    machine = f"{env.get('threads', '?')} thread(s) on a {env.get('cpus', '?')}-core CPU"
    note = (
        f"\n{q.get('test', '?')} held-out questions, model {results.get('model', {}).get('name', '?')}, greedy, "
        f"max {results.get('config', {}).get('max_new_tokens')} new tokens; latency is per question within batches of "
        f"{results.get('config', {}).get('batch_size')} (retrieval included); set-up cost is wall time with {machine}."
    )
    if not results.get("complete"):
        note += "\n\n**Incomplete run**: only the strategies listed were measured."
    return table + note + "\n"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table, one line a row."""
    return "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" + "".join("| " + " | ".join(row) + " |\n" for row in rows)


def plot_png(results: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, s in results.get("strategies", {}).items():
        y = 100 * s["contains"]
        ci = s.get("contains_ci95") or [s["contains"], s["contains"]]
        err = [[y - 100 * ci[0]], [100 * ci[1] - y]]
        for ax, x in ((axes[0], max(s.get("setup_seconds") or 0.0, 0.1)), (axes[1], (s.get("latency") or {}).get("mean_ms", 0.0))):
            ax.errorbar([x], [y], yerr=err, fmt="o", capsize=4, label=LABELS.get(name, name))
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("set-up cost (s, log scale; 0 shown as 0.1)")
    axes[1].set_xlabel("latency per question (ms)")
    for ax in axes:
        ax.set_ylabel("contains-answer accuracy (%) with 95% CI")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("Accuracy against cost")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def detail_tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the retrieval strategies' details: thresholds, misses, ablation, generalisation."""
    tables = []
    retrieval = {n: s for n, s in results.get("strategies", {}).items() if s.get("abstention")}
    if retrieval:
        rows = []
        for name, s in retrieval.items():
            a, misses, raw = s["abstention"], s.get("retrieval_misses") or {}, s.get("without_thresholds") or {}
            rows.append(
                [
                    LABELS.get(name, name),
                    str(s.get("reader", "")),
                    f"{a['min_similarity']:.3f}",
                    _num(a["min_confidence"], digits=3),
                    "yes" if a.get("require_quote") else "no",
                    "yes" if a.get("require_named_document") else "no",
                    f"{a['chosen_on']}, {a['questions']} questions"
                    + (
                        f"; abstaining on {_pct(a['miss_abstention'])} of {a['simulated_misses']} simulated {a.get('miss_kind') or 'retrieval'} misses"
                        if a.get("simulated_misses")
                        else ""
                    ),
                    _pct(s.get("answer_in_context")),
                    f"{_pct(misses.get('abstained'))} of {misses.get('questions', 0)}",
                    f"{_pct(raw.get('contains'))} / {_pct(raw.get('hallucination_rate_all'))}",
                ]
            )
        tables.append(
            (
                "Retrieval strategies: when they abstain, and what retrieval showed them",
                [
                    "strategy",
                    "reader",
                    "min similarity",
                    "min confidence",
                    "quotes only",
                    "named document only",
                    "chosen on",
                    "answer in shown context",
                    "abstained on retrieval misses",
                    "right / hallucinated without thresholds",
                ],
                rows,
            )
        )
    choices = results.get("decoding_choice") or {}
    if choices:
        tables.append(
            (
                "LM readers' decoding, chosen on train",
                ["strategy", "chosen", "grounded", "free", "chosen on"],
                [
                    [
                        LABELS.get(name, name),
                        ch["chosen"],
                        _num(ch["values"].get("grounded"), digits=3),
                        _num(ch["values"].get("free"), digits=3),
                        f"{ch['chosen_on']} by {ch['criterion']}",
                    ]
                    for name, ch in choices.items()
                ],
            )
        )
    variants = (results.get("ablation") or {}).get("variants") or {}
    if variants:
        rows = [
            [
                label,
                _pct(v["contains"], v.get("contains_ci95")),
                _pct(v["hallucination_rate_all"], v.get("hallucination_rate_all_ci95")),
                _pct(v["abstention_rate"]),
                _pct(v["answer_in_context"]),
                _num((v.get("latency") or {}).get("p50_ms"), " ms"),
            ]
            for label, v in variants.items()
        ]
        tables.append(
            (
                "Ablation (test questions, no abstention thresholds): strategy | context | decoding",
                ["variant", "right [95% CI]", "hallucinated [95% CI]", "abstained", "answer in shown context", "latency p50"],
                rows,
            )
        )
    lko = results.get("leave_kinds_out") or {}
    if lko.get("held_out_reader"):
        held, inkind = lko["held_out_reader"], lko["in_kind_reader"]
        tables.append(
            (
                f"Leave-kinds-out: {', '.join(lko['held_out_kinds'])} ({lko['test_questions']} test questions)",
                ["reader", "right [95% CI]", "hallucinated", "abstained"],
                [
                    [
                        "trained without these kinds",
                        _pct(held["contains"], held.get("contains_ci95")),
                        _pct(held["hallucination_rate_all"]),
                        _pct(held["abstention_rate"]),
                    ],
                    [
                        "trained on all kinds",
                        _pct(inkind["contains"], inkind.get("contains_ci95")),
                        _pct(inkind["hallucination_rate_all"]),
                        _pct(inkind["abstention_rate"]),
                    ],
                ],
            )
        )
    return tables


def details_markdown(results: dict) -> str:
    return "\n".join(f"## {title}\n\n" + markdown_table(header, rows) for title, header, rows in detail_tables(results))


def details_html(results: dict) -> str:
    return "".join(f"<h2>{html.escape(title)}</h2>{html_table(header, rows)}" for title, header, rows in detail_tables(results))


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A <table> of a header row and rows of text cells, every cell escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out: Path, results: dict) -> None:
    out = Path(out)
    atomic.write_text(out / "comparison.md", comparison_markdown(results))
    atomic.write_text(out / "details.md", details_markdown(results))
    png = plot_png(results) if results.get("strategies") else b""
    if png:
        with _staged_binary(out / "accuracy_vs_cost.png") as path:
            path.write_bytes(png)
    atomic.write_text(out / "report.html", render_html(results, png))


class _staged_binary:
    """Write-then-rename for a binary file (atomic.write_text is for text)."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.tmp

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def render_html(results: dict, png: bytes) -> str:
    rows = comparison_rows(results)
    table = html_table([title for _, title in COLUMNS], ([r[key] for key, _ in COLUMNS] for r in rows))
    image = f'<img alt="accuracy against cost" src="data:image/png;base64,{base64.b64encode(png).decode()}">' if png else ""
    selection = results.get("template_selection")
    sel_html = ""
    if selection:
        sel_rows = (
            [
                n,
                _pct(s["contains"]),
                _pct(s["exact_match"]),
                _pct(s["f1"]),
                _pct(s["hallucination_rate_all"]),
                _pct(s["abstention_rate"]),
                f"{s['penalised_score']:+.3f}",
            ]
            for n, s in selection["scores"].items()
        )
        sel_html = (
            f"<h2>Template selection (train split, {selection['questions']} questions, by {html.escape(selection['by'])})</h2>"
            f"<p>Chosen: <b>{html.escape(selection['chosen'])}</b></p>"
            + html_table(("template", "contains", "EM", "F1", "hallucination", "abstained", "penalised"), sel_rows)
        )
    adapt = results.get("adaptability", {})
    adapt_html = ""
    if adapt.get("strategies"):
        probes = "".join(
            f"<li>{html.escape(p['question'])} → {html.escape(p['answer'])}"
            + (f" (was {html.escape(p['old_answer'])})" if p["old_answer"] else " (new document)")
            + "</li>"
            for p in adapt["probes"]
        )
        re_index = adapt["reindex"]
        rows_a = (
            [
                LABELS.get(n, n),
                _pct(a["contains"]),
                _pct(a["stale_rate"]),
                _pct(a["abstention_rate"]),
                a["update"],
                _num(a["update_seconds"] if a["update_seconds"] is not None else a["retraining_estimate_seconds"], " s", 1),
            ]
            for n, a in adapt["strategies"].items()
        )
        adapt_html = (
            f"<h2>Adaptability to new knowledge</h2><p>Edited copy of the knowledge base, re-indexed incrementally in {re_index['seconds']:.1f} s "
            f"({re_index['changed']} documents changed, {re_index['added']} added, {re_index['chunks_embedded']} chunks embedded).</p><ul>{probes}</ul>"
            + html_table(("strategy", "new facts right", "still says the old fact", "abstained", "how it updates", "cost"), rows_a)
        )
    status = "" if results.get("complete") else "<p class=warn>Incomplete run: only the strategies shown were measured.</p>"
    q = results.get("questions", {})
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tunelab strategies</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:1em 0;font-size:13px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}th{{background:#f3f3f3}}.warn{{color:#a00}}img{{max-width:100%}}</style></head>
<body><h1>Hallucination-reduction strategies, side by side</h1>{status}
<p>Model <b>{html.escape(str(results.get("model", {}).get("name")))}</b>; {q.get("test")} held-out test questions (same for every strategy);
knowledge base <b>{html.escape(str(results.get("config", {}).get("kb")))}</b>. Accuracies with bootstrap 95% confidence intervals.
Hallucination = a non-abstaining answer that does not contain the gold answer.</p>
<div style="overflow-x:auto">{table}</div>{image}{details_html(results)}{sel_html}{adapt_html}
<p style="color:#666;font-size:12px">Per-question answers: predictions/*.jsonl. All numbers: results.json.</p></body></html>"""
