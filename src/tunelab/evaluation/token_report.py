"""report.html of a token-classification run: the classifier report's page (style, embedded plots,
no scripts), with the entity figures: micro/macro F1, precision and recall per entity type
(seqeval), word accuracy, the tag confusion matrix, and the sentences with the most wrong words."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunelab.evaluation.report import PLOT_TITLES, write_report
from tunelab.evaluation.report_template import (
    GENERALISATION_FLAG,
    HEADLINE_CLOSE,
    HEADLINE_OPEN,
    PAGE_START,
    PLOTS,
    PROFILE_END,
    RUN_SUMMARY_OPEN,
    SETTINGS_TABLES,
)

TOKEN_PLOT_TITLES = {
    **PLOT_TITLES,
    "accuracy": "Training and eval word accuracy (each word's first piece)",
    "confusion_matrix": "Confusion matrix over word tags (test sentences)",
}

TEMPLATE = (
    PAGE_START
    + r"""<div class="muted">tunelab token-classification report · generated {{ generated }} · evaluated on {{ evaluated_on.source }} ({{ evaluated_on.rows }} sentences, {{ test.words }} words)</div>

"""
    + HEADLINE_OPEN
    + r"""  <table>
    <tr><th></th><th>entity micro-F1</th><th>precision</th><th>recall</th><th>macro-F1</th></tr>
    <tr><td>this model</td><td class="num">{{ test.f1_micro | num }}</td><td class="num">{{ test.precision_micro | num }}</td><td class="num">{{ test.recall_micro | num }}</td><td class="num">{{ test.f1_macro | num }}</td></tr>
    <tr><td>baseline: {{ baseline.name }}</td><td class="num">{{ baseline.f1_micro | num }}</td><td class="num">{{ baseline.precision_micro | num }}</td><td class="num">{{ baseline.recall_micro | num }}</td><td class="num">{{ baseline.f1_macro | num }}</td></tr>
  </table>
  <div class="small muted">The baseline, a {{ baseline.name }} ({{ baseline.description }}), was built from the run's train split ({{ baseline.train_rows }} sentences) and scored on the same {{ baseline.test_rows }} sentences as the model.</div>
"""
    + HEADLINE_CLOSE
    + r"""
<div class="cards">
  <div class="card"><div class="name">entity F1 (micro)</div><div class="value">{{ test.f1_micro | num }}</div></div>
  <div class="card"><div class="name">entity F1 (macro)</div><div class="value">{{ test.f1_macro | num }}</div></div>
  <div class="card"><div class="name">precision (micro)</div><div class="value">{{ test.precision_micro | num }}</div></div>
  <div class="card"><div class="name">recall (micro)</div><div class="value">{{ test.recall_micro | num }}</div></div>
  <div class="card"><div class="name">word accuracy</div><div class="value">{{ test.word_accuracy | pct }}</div></div>
  {% if test.timing %}<div class="card"><div class="name">sentences / s</div><div class="value">{{ test.timing.examples_per_second | num(1) }}</div></div>{% endif %}
</div>

"""
    + RUN_SUMMARY_OPEN
    + r"""  <tr><td>entities</td><td>{{ test.entities }}</td></tr>
</table>
"""
    + SETTINGS_TABLES
    + r"""</div>

"""
    + GENERALISATION_FLAG
    + r"""<p class="small muted">Accuracy here is word accuracy (each word's first piece), as measured during training.</p>

<h2>Entities per type</h2>
<p class="small">Entity-level, as seqeval (conlleval) counts: an entity is right only when its type and both its boundaries are.</p>
<table>
  <tr><th>type</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
  {% for kind, row in test.per_type.items() %}
  <tr><td>{{ kind }}</td><td class="num">{{ row.precision | num }}</td><td class="num">{{ row.recall | num }}</td><td class="num">{{ row.f1 | num }}</td><td class="num">{{ row.support }}</td></tr>
  {% endfor %}
  <tr class="avg"><td>micro average</td><td class="num">{{ test.precision_micro | num }}</td><td class="num">{{ test.recall_micro | num }}</td><td class="num">{{ test.f1_micro | num }}</td><td class="num">{{ test.entities }}</td></tr>
</table>

"""
    + PLOTS
    + r"""
<h2>Sentences with the most wrong words</h2>
{% if mistakes %}
<table>
  <tr><th>#</th><th>sentence</th><th>wrong words (true → predicted)</th></tr>
  {% for m in mistakes %}<tr><td class="num">{{ loop.index }}</td><td class="text">{{ m.text }}</td><td>{{ m.errors | join(", ") }}</td></tr>{% endfor %}
</table>
<p class="small muted">All predictions are in predictions.parquet (text, words, true and predicted tags).</p>
{% else %}<p>Every word's tag is right.</p>{% endif %}

<h2>Data profile</h2>
{% if profile and profile.splits %}
<table>
  <tr><th>split</th><th>sentences</th><th>words</th><th>entities per type</th><th>token length (p50 / p95 / max)</th></tr>
  {% for name, s in profile.splits.items() %}
  <tr><td>{{ name }}</td><td class="num">{{ s.rows }}</td><td class="num">{{ s.words }}</td>
      <td>{% for kind, count in (s.entity_counts or {}).items() %}{{ kind }}: {{ count }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
      <td>{% if s.token_length %}{{ s.token_length.p50 | num(0) }} / {{ s.token_length.p95 | num(0) }} / {{ s.token_length.max }}{% else %}—{% endif %}</td></tr>
  {% endfor %}
</table>
"""
    + PROFILE_END
    + r"""
<p class="small muted">Files: metrics.json, predictions.parquet, plots/*.png — next to this report. The model/ folder loads in transformers.pipeline("token-classification", aggregation_strategy="first").</p>
</body>
</html>
"""
)


def write_token_report(path: str | os.PathLike, **context: Any) -> Path:
    """report.html of a token-classification run: render_report's arguments, on this page."""
    return write_report(path, template=TEMPLATE, plot_titles=TOKEN_PLOT_TITLES, **context)
