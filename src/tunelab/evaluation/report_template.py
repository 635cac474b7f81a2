"""The Jinja2 template of report.html: one file, inline CSS, images as data: URIs, no scripts, no network."""

# The page style, shared with the multi-label report (evaluation/multilabel_report.py).
STYLE = r"""<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1100px;
         padding: 1.5rem; color: #1d2430; line-height: 1.45; }
  h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #e3e7ee; padding-bottom: .2rem; margin-top: 2rem; }
  .muted { color: #667085; } .small { font-size: .85rem; }
  table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .92rem; }
  th, td { border: 1px solid #d9dee7; padding: .3rem .6rem; text-align: left; vertical-align: top; }
  th { background: #f3f5f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
  tr.avg td { background: #fafbfd; font-weight: 600; }
  .cards { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; }
  .card { border: 1px solid #d9dee7; border-radius: 8px; padding: .6rem 1rem; min-width: 8.5rem; }
  .card .value { font-size: 1.5rem; font-weight: 600; } .card .name { color: #667085; font-size: .85rem; }
  .grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1rem; }
  figure { margin: 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e7ee; }
  figcaption { font-size: .85rem; color: #667085; }
  .flag { border-left: 5px solid; padding: .5rem 1rem; margin: .8rem 0; border-radius: 4px; }
  .flag.ok { border-color: #2e9e5b; background: #eef8f2; } .flag.overfitting { border-color: #d2691e; background: #fdf3ea; }
  .flag.unknown { border-color: #98a2b3; background: #f5f6f8; }
  .flag.behind { border-color: #c0392b; background: #fdeeee; }
  ul.warnings li { color: #9a4a00; }
  td.text { max-width: 560px; white-space: pre-wrap; word-break: break-word; }
  .columns { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
</style>"""

# The pieces both reports show alike; each template puts them together with its own figures.
PAGE_START = (
    r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tunelab report — {{ run_name }}</title>
"""
    + STYLE
    + r"""
</head>
<body>
<h1>{{ run_name }}</h1>
"""
)
HEADLINE_OPEN = r"""{% if baseline and baseline.comparison %}{% set c = baseline.comparison %}
<div class="flag {{ 'ok' if c.beats_baseline else 'behind' }}" id="baseline-headline">
  <strong>{{ c.headline }}</strong>
  {% if c.advice %}<div>What to try:</div><ul>{% for tip in c.advice %}<li>{{ tip }}</li>{% endfor %}</ul>{% endif %}
"""
HEADLINE_CLOSE = r"""</div>
{% elif baseline %}
<div class="flag unknown" id="baseline-headline">No baseline comparison: {{ baseline.missing }}.</div>
{% endif %}
"""
# The run summary's first table, up to the task's own rows about the labels.
RUN_SUMMARY_OPEN = r"""<h2>Run summary</h2>
<div class="columns">
<table>
  <tr><th colspan="2">Model and data</th></tr>
  <tr><td>model</td><td>{{ config.model | default("—") }}</td></tr>
  <tr><td>data</td><td>{{ config.data | default("—") }}</td></tr>
  <tr><td>evaluated on</td><td>{{ evaluated_on.source }} ({{ evaluated_on.rows }} rows)</td></tr>
"""
SETTINGS_TABLES = r"""<table>
  <tr><th colspan="2">Hyperparameters</th></tr>
  {% for key, value in hyperparameters.items() %}<tr><td>{{ key }}</td><td>{{ value }}</td></tr>{% endfor %}
</table>
<table>
  <tr><th colspan="2">Hardware and time</th></tr>
  {% for key, value in environment.items() %}<tr><td>{{ key }}</td><td>{{ value }}</td></tr>{% endfor %}
  {% for key, value in train_info.items() %}<tr><td>{{ key }}</td><td>{{ value | num }}</td></tr>{% endfor %}
  {% if test.timing %}
  <tr><td>inference</td><td>{{ test.timing.examples }} examples in {{ test.timing.seconds | num(2) }} s ({{ test.timing.examples_per_second | num(1) }}/s, batch {{ test.timing.batch_size }}{% if test.timing.backend %}, {{ test.timing.backend }}{% endif %})</td></tr>
  {% if test.timing.latency_ms_p50 is not none %}<tr><td>latency, one text</td><td>p50 {{ test.timing.latency_ms_p50 | num(1) }} ms · p95 {{ test.timing.latency_ms_p95 | num(1) }} ms (n={{ test.timing.latency_samples }})</td></tr>{% endif %}
  {% endif %}
</table>
"""
GENERALISATION_FLAG = r"""<h2>Generalisation check</h2>
<div class="flag {{ generalisation.verdict }}">
  <strong>{% if generalisation.verdict == "ok" %}Generalises: no sign of over-fitting{% elif generalisation.verdict == "overfitting" %}Possible over-fitting{% else %}Not enough training history to judge{% endif %}</strong>
  <ul>{% for reason in generalisation.reasons %}<li>{{ reason }}</li>{% endfor %}</ul>
</div>
"""
PLOTS = r"""<h2>Plots</h2>
<div class="grid">
{% for plot in plots %}
  <figure><img src="{{ plot.uri }}" alt="{{ plot.title }}" width="{{ plot.width }}" height="{{ plot.height }}"><figcaption>{{ plot.title }}</figcaption></figure>
{% endfor %}
</div>
"""
# The data profile's end: the page without a profile, then the profile's warnings.
PROFILE_END = r"""{% else %}<p class="muted">No data profile in this run.</p>{% endif %}
<h3>Warnings</h3>
{% if profile.warnings %}<ul class="warnings">{% for w in profile.warnings %}<li>{{ w }}</li>{% endfor %}</ul>{% else %}<p>None.</p>{% endif %}
"""

TEMPLATE = (
    PAGE_START
    + r"""<div class="muted">tunelab evaluation report · generated {{ generated }} · evaluated on {{ evaluated_on.source }} ({{ evaluated_on.rows }} examples)</div>

"""
    + HEADLINE_OPEN
    + r"""  <table>
    <tr><th></th><th>accuracy</th><th>macro-F1</th></tr>
    <tr><td>this model</td><td class="num">{{ test.accuracy | pct }}</td><td class="num">{{ test.f1_macro | num }}</td></tr>
    <tr><td>baseline: {{ baseline.name }}</td><td class="num">{{ baseline.accuracy | pct }}</td><td class="num">{{ baseline.f1_macro | num }}</td></tr>
    <tr><td>difference</td><td class="num">{{ "%+.1f" | format(c.accuracy_points) }} points</td><td class="num">{{ "%+.1f" | format(c.f1_macro_points) }} points</td></tr>
  </table>
  <div class="small muted">The baseline, {{ baseline.name }} ({{ baseline.description }}), was fitted on the run's train split ({{ baseline.train_rows }} rows) in {{ baseline.fit_seconds | num(2) }} s, with its regularisation C = {{ baseline.C }} chosen on {{ baseline.C_chosen_on }}, and scored on the same {{ baseline.test_rows }} rows as the model.</div>
"""
    + HEADLINE_CLOSE
    + r"""
<div class="cards">
  <div class="card"><div class="name">accuracy</div><div class="value">{{ test.accuracy | pct }}</div></div>
  <div class="card"><div class="name">F1 (macro)</div><div class="value">{{ test.f1_macro | num }}</div></div>
  <div class="card"><div class="name">eval loss</div><div class="value">{{ test.loss | num }}</div></div>
  <div class="card"><div class="name">ROC AUC (macro)</div><div class="value">{{ test.roc_auc.macro | num }}</div></div>
  {% if test.top_2_accuracy is defined %}<div class="card"><div class="name">top-2 accuracy</div><div class="value">{{ test.top_2_accuracy | pct }}</div></div>{% endif %}
  <div class="card"><div class="name">calibration error (ECE)</div><div class="value">{{ test.ece | num }}</div></div>
  {% if test.timing %}<div class="card"><div class="name">examples / s</div><div class="value">{{ test.timing.examples_per_second | num(1) }}</div></div>{% endif %}
</div>

"""
    + RUN_SUMMARY_OPEN
    + r"""  <tr><td>labels</td><td>{{ test.labels | join(", ") }}</td></tr>
</table>
"""
    + SETTINGS_TABLES
    + r"""</div>

"""
    + GENERALISATION_FLAG
    + r"""{% if generalisation.verdict != "unknown" %}
<table>
  <tr><th></th><th>training (last epoch)</th><th>eval (last epoch)</th><th>gap</th><th>test</th></tr>
  <tr><td>loss</td><td class="num">{{ generalisation.train_loss | num }}</td><td class="num">{{ generalisation.eval_loss | num }}</td><td class="num">{{ generalisation.loss_gap | num }}</td><td class="num">{{ test.loss | num }}</td></tr>
  <tr><td>accuracy</td><td class="num">{{ generalisation.train_accuracy | pct }}</td><td class="num">{{ generalisation.eval_accuracy | pct }}</td><td class="num">{{ generalisation.accuracy_gap | pct }}</td><td class="num">{{ test.accuracy | pct }}</td></tr>
</table>
{% endif %}

<h2>Metrics per class</h2>
<table>
  <tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th>ROC AUC</th><th>average precision</th></tr>
  {% for label, row in test.per_class.items() %}
  <tr><td>{{ label }}</td><td class="num">{{ row.precision | num }}</td><td class="num">{{ row.recall | num }}</td><td class="num">{{ row.f1 | num }}</td><td class="num">{{ row.support }}</td>
      <td class="num" title="{{ test.roc_auc.undefined.get(label, '') }}">{{ test.roc_auc.per_class[label] | num }}</td>
      <td class="num" title="{{ test.average_precision.undefined.get(label, '') }}">{{ test.average_precision.per_class[label] | num }}</td></tr>
  {% endfor %}
  {% for average in ("macro", "weighted") %}
  <tr class="avg"><td>{{ average }} average</td><td class="num">{{ test[average].precision | num }}</td><td class="num">{{ test[average].recall | num }}</td><td class="num">{{ test[average].f1 | num }}</td><td class="num">{{ test[average].support }}</td>
      <td class="num">{% if average == "macro" %}{{ test.roc_auc.macro | num }}{% endif %}</td><td class="num">{% if average == "macro" %}{{ test.average_precision.macro | num }}{% endif %}</td></tr>
  {% endfor %}
</table>
{% set notes = test.roc_auc.undefined.values() | list + test.average_precision.undefined.values() | list %}
{% if notes or test.roc_auc.macro_note %}<ul class="small muted">{% for note in notes %}<li>{{ note }}</li>{% endfor %}{% if test.roc_auc.macro_note %}<li>{{ test.roc_auc.macro_note }}</li>{% endif %}</ul>{% endif %}
<p class="small">accuracy {{ test.accuracy | pct }}{% if test.top_2_accuracy is defined %} · top-2 accuracy {{ test.top_2_accuracy | pct }}{% endif %} · loss {{ test.loss | num }} · expected calibration error {{ test.ece | num }} ({{ test.calibration.n_bins }} bins)</p>

<h2>Confusion matrix</h2>
<div class="columns">
<table>
  <tr><th>true \ predicted</th>{% for label in test.confusion_matrix.labels %}<th>{{ label }}</th>{% endfor %}</tr>
  {% for row in test.confusion_matrix.counts %}{% set i = loop.index0 %}
  <tr><th>{{ test.confusion_matrix.labels[i] }}</th>{% for value in row %}<td class="num" title="{{ test.confusion_matrix.normalized[i][loop.index0] | pct }} of the true class">{{ value }}</td>{% endfor %}</tr>
  {% endfor %}
</table>
</div>

"""
    + PLOTS
    + r"""
<h2>Most confident mistakes</h2>
{% if mistakes %}
<table>
  <tr><th>#</th><th>text</th><th>true label</th><th>predicted</th><th>confidence</th></tr>
  {% for m in mistakes %}<tr><td class="num">{{ loop.index }}</td><td class="text">{{ m.text }}</td><td>{{ m.label }}</td><td>{{ m.predicted }}</td><td class="num">{{ m.confidence | pct }}</td></tr>{% endfor %}
</table>
<p class="small muted">All predictions are in predictions.parquet (text, label, predicted, confidence, per-class probabilities).</p>
{% else %}<p>No mistakes on this data.</p>{% endif %}

{% if bias %}
<h2>Bias probe</h2>
<p class="small muted">Each text containing a term from a list was rewritten with the paired term (he ↔ she, ...) and scored again. A flip is a changed predicted label; the shift is the change in the probability of the originally predicted label.</p>
<table>
  <tr><th>list</th><th>pairs</th><th>texts probed</th><th>flipped</th><th>flip rate</th><th>mean |shift|</th><th>mean shift</th><th>max |shift|</th></tr>
  {% for name, entry in bias.lists.items() %}
  <tr><td>{{ name }}</td><td class="num">{{ entry.pairs }}</td><td class="num">{{ entry.texts_probed }}</td><td class="num">{{ entry.flipped }}</td>
      <td class="num" title="{{ entry.reason | default('') }}">{{ entry.flip_rate | pct }}</td><td class="num">{{ entry.mean_abs_shift | num }}</td><td class="num">{{ entry.mean_shift | num }}</td><td class="num">{{ entry.max_abs_shift | num }}</td></tr>
  {% endfor %}
</table>
{% for name, entry in bias.lists.items() %}{% if entry.examples %}
<h3>Flipped examples: {{ name }}</h3>
<table>
  <tr><th>original text</th><th>after the swap</th><th>prediction</th><th>after the swap</th></tr>
  {% for e in entry.examples %}<tr><td class="text">{{ e.text }}</td><td class="text">{{ e.swapped }}</td><td>{{ e.predicted }} ({{ e.confidence | pct }})</td><td>{{ e.predicted_after_swap }} ({{ e.predicted }}: {{ e.confidence_after_swap | pct }})</td></tr>{% endfor %}
</table>
{% endif %}{% endfor %}
{% endif %}

<h2>Data profile</h2>
{% if profile and profile.splits %}
<table>
  <tr><th>split</th><th>rows</th><th>class counts</th><th>token length (p50 / p95 / max)</th><th>duplicates</th><th>overlap with train</th></tr>
  {% for name, s in profile.splits.items() %}
  <tr><td>{{ name }}</td><td class="num">{{ s.rows }}</td>
      <td>{% for label, count in (s.class_counts or {}).items() %}{{ label }}: {{ count }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
      <td>{% if s.token_length %}{{ s.token_length.p50 | num(0) }} / {{ s.token_length.p95 | num(0) }} / {{ s.token_length.max }}{% else %}—{% endif %}</td>
      <td class="num">{{ s.duplicate_texts | default("—") }}</td><td class="num">{{ s.overlap_with_train | default("—") }}</td></tr>
  {% endfor %}
</table>
"""
    + PROFILE_END
    + r"""
<p class="small muted">Files: metrics.json, predictions.parquet, plots/*.png — next to this report.</p>
</body>
</html>
"""
)
