"""report.html of a multi-label run: the classifier report's page (style, embedded plots, no
scripts), with the multi-label figures: micro/macro/samples F1, subset accuracy, per-label
P/R/F1, thresholds and ROC AUC, ROC curves and the label co-occurrence heat map."""

from __future__ import annotations

import os
from collections.abc import Mapping
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

MULTILABEL_PLOT_TITLES = {
    **PLOT_TITLES,
    "accuracy": "Training and eval subset accuracy (every label right, threshold 0.5)",
    "roc": "ROC curves (per label)",
    "cooccurrence": "Label co-occurrence (test rows)",
}

TEMPLATE = (
    PAGE_START
    + r"""<div class="muted">tunelab multi-label evaluation report · generated {{ generated }} · evaluated on {{ evaluated_on.source }} ({{ evaluated_on.rows }} examples)</div>

"""
    + HEADLINE_OPEN
    + r"""  <table>
    <tr><th></th><th>micro-F1</th><th>macro-F1</th><th>samples-F1</th><th>subset accuracy</th></tr>
    <tr><td>this model</td><td class="num">{{ test.f1_micro | num }}</td><td class="num">{{ test.f1_macro | num }}</td><td class="num">{{ test.f1_samples | num }}</td><td class="num">{{ test.subset_accuracy | pct }}</td></tr>
    <tr><td>baseline: {{ baseline.name }}</td><td class="num">{{ baseline.f1_micro | num }}</td><td class="num">{{ baseline.f1_macro | num }}</td><td class="num">{{ baseline.f1_samples | num }}</td><td class="num">{{ baseline.subset_accuracy | pct }}</td></tr>
  </table>
  <div class="small muted">The baseline, {{ baseline.name }} ({{ baseline.description }}), was fitted on the run's train split ({{ baseline.train_rows }} rows) in {{ baseline.fit_seconds | num(2) }} s; its C = {{ baseline.C }} and its per-label thresholds were chosen on {{ baseline.C_chosen_on }}, by the rule the model's follow; it was scored on the same {{ baseline.test_rows }} rows as the model.</div>
"""
    + HEADLINE_CLOSE
    + r"""
<div class="cards">
  <div class="card"><div class="name">F1 (micro)</div><div class="value">{{ test.f1_micro | num }}</div></div>
  <div class="card"><div class="name">F1 (macro)</div><div class="value">{{ test.f1_macro | num }}</div></div>
  <div class="card"><div class="name">F1 (samples)</div><div class="value">{{ test.f1_samples | num }}</div></div>
  <div class="card"><div class="name">subset accuracy</div><div class="value">{{ test.subset_accuracy | pct }}</div></div>
  <div class="card"><div class="name">ROC AUC (macro)</div><div class="value">{{ test.roc_auc.macro | num }}</div></div>
  <div class="card"><div class="name">Hamming loss</div><div class="value">{{ test.hamming_loss | num }}</div></div>
  {% if test.timing %}<div class="card"><div class="name">examples / s</div><div class="value">{{ test.timing.examples_per_second | num(1) }}</div></div>{% endif %}
</div>

"""
    + RUN_SUMMARY_OPEN
    + r"""  <tr><td>labels per row</td><td>{{ test.label_cardinality.true | num(2) }} true, {{ test.label_cardinality.predicted | num(2) }} predicted</td></tr>
</table>
"""
    + SETTINGS_TABLES
    + r"""</div>

"""
    + GENERALISATION_FLAG
    + r"""<p class="small muted">Accuracy here is subset accuracy at threshold 0.5, as measured during training.</p>

<h2>Metrics per label</h2>
{% if thresholds %}<p class="small">Decision thresholds chosen on {{ thresholds.chosen_on }}, never on the test rows: {{ thresholds.rule }}.</p>{% endif %}
<table>
  <tr><th>label</th><th>threshold</th><th>chosen by</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th>predicted</th><th>ROC AUC</th><th>average precision</th></tr>
  {% for label, row in test.per_label.items() %}
  <tr><td>{{ label }}</td><td class="num">{{ row.threshold | num }}</td><td>{{ thresholds.per_label[label].chosen_by if thresholds and label in thresholds.per_label else "—" }}</td>
      <td class="num">{{ row.precision | num }}</td><td class="num">{{ row.recall | num }}</td><td class="num">{{ row.f1 | num }}</td><td class="num">{{ row.support }}</td><td class="num">{{ row.predicted }}</td>
      <td class="num" title="{{ test.roc_auc.undefined.get(label, '') }}">{{ row.roc_auc | num }}</td><td class="num">{{ row.average_precision | num }}</td></tr>
  {% endfor %}
  {% for average in ("micro", "macro", "samples") %}
  <tr class="avg"><td>{{ average }} average</td><td></td><td></td><td class="num">{{ test[average].precision | num }}</td><td class="num">{{ test[average].recall | num }}</td><td class="num">{{ test[average].f1 | num }}</td><td></td><td></td>
      <td class="num">{% if average in ("micro", "macro") %}{{ test.roc_auc[average] | num }}{% endif %}</td><td class="num">{% if average in ("micro", "macro") %}{{ test.average_precision[average] | num }}{% endif %}</td></tr>
  {% endfor %}
</table>
{% set notes = test.roc_auc.undefined.values() | list %}
{% if notes or test.roc_auc.macro_note %}<ul class="small muted">{% for note in notes %}<li>{{ note }}</li>{% endfor %}{% if test.roc_auc.macro_note %}<li>{{ test.roc_auc.macro_note }}</li>{% endif %}</ul>{% endif %}
<p class="small">subset accuracy {{ test.subset_accuracy | pct }} · Hamming loss {{ test.hamming_loss | num }} · mean binary cross-entropy {{ test.loss | num }}</p>

"""
    + PLOTS
    + r"""
<h2>Rows with the most wrong labels</h2>
{% if mistakes %}
<table>
  <tr><th>#</th><th>text</th><th>true labels</th><th>predicted</th><th>wrong labels</th></tr>
  {% for m in mistakes %}<tr><td class="num">{{ loop.index }}</td><td class="text">{{ m.text }}</td><td>{{ m.labels | join(", ") }}</td><td>{{ m.predicted | join(", ") }}</td><td class="num">{{ m.wrong_labels }}</td></tr>{% endfor %}
</table>
<p class="small muted">All predictions are in predictions.parquet (text, true and predicted label sets, per-label probabilities).</p>
{% else %}<p>Every row's label set is right.</p>{% endif %}

<h2>Data profile</h2>
{% if profile and profile.splits %}
<table>
  <tr><th>split</th><th>rows</th><th>rows per label</th><th>labels per row</th><th>token length (p50 / p95 / max)</th><th>overlap with train</th></tr>
  {% for name, s in profile.splits.items() %}
  <tr><td>{{ name }}</td><td class="num">{{ s.rows }}</td>
      <td>{% for label, count in (s.label_counts or {}).items() %}{{ label }}: {{ count }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
      <td class="num">{{ s.labels_per_row | num(2) }}</td>
      <td>{% if s.token_length %}{{ s.token_length.p50 | num(0) }} / {{ s.token_length.p95 | num(0) }} / {{ s.token_length.max }}{% else %}—{% endif %}</td>
      <td class="num">{{ s.overlap_with_train | default("—") }}</td></tr>
  {% endfor %}
</table>
"""
    + PROFILE_END
    + r"""
<p class="small muted">Not available for multi-label runs yet: tunelab serve, export and compare. Files: metrics.json, thresholds.json, predictions.parquet, plots/*.png — next to this report.</p>
</body>
</html>
"""
)


def write_multilabel_report(path: str | os.PathLike, *, thresholds: Mapping[str, Any] | None = None, **context: Any) -> Path:
    """report.html of a multi-label run: render_report's arguments, on this page, plus the thresholds' record."""
    return write_report(path, template=TEMPLATE, plot_titles=MULTILABEL_PLOT_TITLES, thresholds=thresholds, **context)
