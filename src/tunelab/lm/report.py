"""report.html of an sft run: eval loss and perplexity before/after, the loss curve, and sample
answers on eval prompts before and after training. Self-contained (plot embedded, no scripts)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape

from tunelab.atomic import write_text

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ run_name }} — tunelab sft</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.35em .6em;vertical-align:top;text-align:left}
th{background:#f4f4f4}pre{white-space:pre-wrap;margin:0;font-family:inherit}.num{text-align:right;font-variant-numeric:tabular-nums}
.better{color:#176a1f;font-weight:bold}.worse{color:#a21a1a;font-weight:bold}
</style></head><body>
<h1>Supervised fine-tuning: {{ run_name }}</h1>
<p>Model <code>{{ config.model }}</code> on <code>{{ metrics.data.source }}</code> ({{ metrics.data.format }} rows),
method <b>{{ config.method }}</b>{% if config.method == 'lora' %} (rank {{ config.lora_r }}, alpha {{ config.lora_alpha }}, dropout {{ config.lora_dropout }}, targets {{ config.target_modules }}){% endif %}.</p>
<h2>Evaluation</h2>
<table><tr><th></th><th>eval loss</th><th>perplexity</th></tr>
<tr><td>before training</td><td class="num">{{ '%.4f' % metrics.eval_before.loss }}</td><td class="num">{{ '%.2f' % metrics.eval_before.perplexity }}</td></tr>
<tr><td>after training</td><td class="num {{ 'better' if metrics.eval_after.loss < metrics.eval_before.loss else 'worse' }}">{{ '%.4f' % metrics.eval_after.loss }}</td><td class="num">{{ '%.2f' % metrics.eval_after.perplexity }}</td></tr></table>
<p>Loss is the mean cross-entropy over answer tokens only (prompt tokens are not scored).</p>
{% if plot %}<img alt="loss curve" src="data:image/png;base64,{{ plot }}" width="640">{% endif %}
<h2>Training</h2>
<table>{% for key, value in train.items() %}<tr><th>{{ key }}</th><td class="num">{{ value }}</td></tr>{% endfor %}</table>
<h2>Sample generations on eval prompts (greedy)</h2>
{% if samples %}<table><tr><th>prompt</th><th>reference</th><th>before training</th><th>after training</th></tr>
{% for s in samples %}<tr><td><pre>{{ s.prompt_text }}</pre></td><td><pre>{{ s.reference }}</pre></td><td><pre>{{ s.before }}</pre></td><td><pre>{{ s.after }}</pre></td></tr>{% endfor %}
</table>{% else %}<p>No samples were requested (--samples 0).</p>{% endif %}
<h2>Data</h2><table>{% for key, value in metrics.data.items() %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
<h2>Configuration</h2><table>{% for key, value in config.items() %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
<h2>Environment</h2><table>{% for key, value in metrics.environment.items() %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
</body></html>
"""


def write_report(run_dir: Path, *, run_name: str, config: dict[str, Any], metrics: dict[str, Any], samples: list[dict[str, Any]]) -> Path:
    history = _history(run_dir / "history.jsonl")
    plot = loss_plot(history)
    if plot is not None:
        (run_dir / "plots").mkdir(exist_ok=True)
        (run_dir / "plots" / "loss.png").write_bytes(plot)
    shown = [dict(s, prompt_text=_prompt_text(s["prompt"])) for s in samples]
    train = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in metrics["train"].items()}
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    html = env.from_string(TEMPLATE).render(
        run_name=run_name,
        config=config,
        metrics=metrics,
        train=train,
        samples=shown,
        plot=base64.b64encode(plot).decode() if plot else None,
    )
    return write_text(run_dir / "report.html", html)


def _history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def loss_plot(history: list[dict[str, Any]]) -> bytes | None:
    train = [(h["step"], h["loss"]) for h in history if h.get("type") == "train" and "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if h.get("type") == "eval" and "eval_loss" in h]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
