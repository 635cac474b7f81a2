"""benchmarks/multilabel.py's --variant on a tiny model: the variant's settings reach the run and its results file says which ran;
the dev script's scoring reads the eval split only."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.test_multilabel import tags_frame
from tunelab.data.multilabel import multi_hot
from tunelab.evaluation.multilabel_metrics import multilabel_metrics
from tunelab.models.multilabel import sigmoid
from tunelab.run import Run
from tunelab.runtime.choice import load_multilabel

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """benchmarks/multilabel.py as a module."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports seed_stats from beside itself
    spec = importlib.util.spec_from_file_location("_bench_multilabel", BENCHMARKS / "multilabel.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tags_jsonl(tmp_path) -> Path:
    data = tmp_path / "tags.jsonl"
    tags_frame(150).to_json(data, orient="records", lines=True)
    return data


def test_the_mean_lpft_variant_trains_from_the_probe_and_is_recorded(bench, tiny_bert, tags_jsonl, capsys):
    argv = [
        "--model",
        str(tiny_bert),
        "--data",
        str(tags_jsonl),
        "--label-col",
        "tags",
        "--max-length",
        "32",
        "--lr",
        "1e-3",
        "--quick",
        "--variant",
        "mean+lpft",
    ]
    assert bench.main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["variant"] == {"name": "mean+lpft", "settings": {"pooling": "mean", "head_init": "linear-probe"}}
    (seed,) = document["per_seed"]
    assert seed["finetune"]["head_probe"]["C"] in (0.1, 1.0, 10.0, 100.0)
    assert 0 <= document["finetune"]["f1_micro"]["mean"] <= 1


def test_a_dev_candidate_overrides_the_flags_and_is_scored_on_the_eval_split(bench, tiny_bert, tags_jsonl, tmp_path):
    args = bench.settings_parser("dev").parse_args(
        ["--model", str(tiny_bert), "--data", str(tags_jsonl), "--label-col", "tags", "--variant", "lpft-lr2e-5-4ep"]
    )
    args.max_length, args.quick = 32, True
    scored = bench.one_seed(args, 0, tmp_path, scored_on="eval")
    run = Run.open(tmp_path / "seed-0")
    assert (run.config["lr"], run.config["pooling"], run.config["epochs"]) == (2e-5, "mean", 1.0)  # the variant's lr over --lr's; --quick's one epoch
    eval_split = run.split("eval")
    classifier = load_multilabel(run, "torch")
    proba = sigmoid(classifier.logits(eval_split["text"].tolist()))
    expected = multilabel_metrics(multi_hot(eval_split["labels"], run.labels).astype(int), proba, classifier.thresholds, run.labels)
    assert scored["scored_on"] == "eval"
    assert scored["finetune"]["f1_micro"] == pytest.approx(expected["f1_micro"])
    assert scored["finetune"]["f1_micro"] != pytest.approx(run.metrics["test"]["f1_micro"])  # the test figures the run wrote are not what was read
