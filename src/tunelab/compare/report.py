"""The Pareto plots (PNG) and compare.html: one self-contained page, images embedded, no scripts."""

from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunelab.atomic import write_text
from tunelab.compare.leaderboard import MD_HEADERS, format_value, shown_columns

PARETO_AXES = {
    "train_time_s": ("pareto_train_time", "Training time (s, log scale)", "training time"),
    "latency_p50_ms": ("pareto_latency", "Inference latency p50 (ms per text, log scale)", "inference latency"),
}


def pareto_plot(rows: list[dict[str, Any]], cost: str, path: Path, quality: str = "accuracy") -> Path:
    """The task's first figure (quality) against one cost; Pareto-optimal candidates are filled stars joined by the front."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    flag, xlabel, against = PARETO_AXES[cost]
    name = MD_HEADERS[quality]
    title = f"{name[0].upper()}{name[1:]} vs {against}"
    points = [r for r in rows if r.get(cost) is not None and r[cost] > 0]
    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for row in points:
        optimal = row[flag]
        ax.scatter(
            row[cost],
            row[quality],
            s=140 if optimal else 60,
            marker="*" if optimal else "o",
            color="#c0392b" if optimal else "#7f8c8d",
            zorder=3,
            edgecolors="black",
            linewidths=0.5,
        )
        ax.annotate(row["candidate"], (row[cost], row[quality]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = sorted((r for r in points if r[flag]), key=lambda r: r[cost])
    if len(front) > 1:
        ax.step(
            [r[cost] for r in front],
            [r[quality] for r in front],
            where="post",
            color="#c0392b",
            alpha=0.5,
            label="Pareto front (no candidate is both better and cheaper)",
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"Test {name}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def write_html(
    path: Path,
    *,
    title: str,
    rows: list[dict[str, Any]],
    recommendation: str,
    plots: list[Path],
    facts: dict[str, Any],
    searches: dict[str, Any],
    ranked_by: str = "test accuracy",
) -> Path:
    columns = shown_columns(rows)
    esc = html.escape
    head = "".join(f"<th>{esc(MD_HEADERS[c])}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(format_value(c, row[c]))}</td>" for c in columns) + "</tr>" for row in rows)
    images = "".join(f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></figure>' for p in plots)
    fact_rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts.items())
    runs = "".join(f"<li><code>{esc(r['candidate'])}</code>: <code>{esc(r['run'])}</code></li>" for r in rows)
    search_html = ""
    for name, record in searches.items():
        # A search.json written before trials recorded their metric holds eval_accuracy.
        metric = record["trials"][0].get("eval_metric", "accuracy")
        trial_rows = "".join(
            f"<tr><td>{t['trial'] + 1}{' ★' if t['trial'] == record['best_trial'] else ''}</td><td>{esc(str(t['params']))}</td>"
            f"<td>{esc(format_value('eval_loss', t.get('eval_score', t.get('eval_accuracy'))))}</td><td>{esc(format_value('eval_loss', t['eval_loss']))}</td>"
            f"<td>{esc(format_value('train_time_s', t['train_runtime_s']))}</td></tr>"
            for t in record["trials"]
        )
        search_html += (
            f"<h3>Search: {esc(name)} ({esc(record['strategy'])}, chosen on the {esc(record['chosen_on'])})</h3>"
            f"<table><tr><th>trial</th><th>hyperparameters</th><th>eval {esc(metric)}</th><th>eval loss</th><th>train s</th></tr>{trial_rows}</table>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: right; }}
th {{ background: #f4f4f4; }} td:nth-child(2), td:nth-child(3), td:nth-child(4) {{ text-align: left; }}
.recommendation {{ background: #eef7ee; border-left: 4px solid #2e7d32; padding: 0.7rem 1rem; font-size: 1.05rem; }}
figure {{ display: inline-block; margin: 0.5rem; width: 47%; min-width: 420px; }} img {{ width: 100%; }}
.scroll {{ overflow-x: auto; }}
.facts th, .facts td {{ text-align: left; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p class="recommendation">{esc(recommendation)}</p>
<h2>Leaderboard</h2>
<p>Ranked by {esc(ranked_by)}. ★ in a Pareto column: no other candidate is both at least as good by that figure and cheaper on that axis.
Quality and training figures come from each run's metrics.json; latency and examples/s were measured here with the same texts for every candidate.</p>
<div class="scroll"><table><tr>{head}</tr>{body}</table></div>
<h2>Quality against cost</h2>
{images}
<h2>How this was measured</h2>
<table class="facts">{fact_rows}</table>
{search_html}
<h2>Runs</h2><ul>{runs}</ul>
<p><small>generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by tunelab compare</small></p>
</body></html>
"""
    return write_text(path, page)
