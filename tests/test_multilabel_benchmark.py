"""benchmarks/multilabel.py's --variant on a tiny model: the variant's settings reach the run and its results file says which ran."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from tests.test_multilabel import tags_frame

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_mean_lpft_variant_trains_from_the_probe_and_is_recorded(tiny_bert, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports seed_stats from beside itself
    spec = importlib.util.spec_from_file_location("_bench_multilabel", BENCHMARKS / "multilabel.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    data = tmp_path / "tags.jsonl"
    tags_frame(150).to_json(data, orient="records", lines=True)
    argv = ["--model", str(tiny_bert), "--data", str(data), "--label-col", "tags", "--max-length", "32", "--lr", "1e-3", "--quick", "--variant", "mean+lpft"]
    assert bench.main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["variant"] == {"name": "mean+lpft", "settings": {"pooling": "mean", "head_init": "linear-probe"}}
    (seed,) = document["per_seed"]
    assert seed["finetune"]["head_probe"]["C"] in (0.1, 1.0, 10.0, 100.0)
    assert 0 <= document["finetune"]["f1_micro"]["mean"] <= 1
