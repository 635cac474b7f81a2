"""The pure helpers of benchmarks/finetune_vs_tutorial.py, benchmarks/serve_load.py and benchmarks/layers_dev.py: disjoint
splits that leave the tuning rows out, the statistics over seeds and test rows, the serving step ratios, the layer rule."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ft = load("finetune_vs_tutorial")
serve = load("serve_load")
layers_dev = load("layers_dev")


def frame(rows: int = 600, repeats: int = 20) -> pd.DataFrame:
    labels = ["negative", "neutral", "positive"]
    texts = [f"text {i}" for i in range(rows - repeats)] + [f"text {i}" for i in range(repeats)]  # a few repeated texts
    return pd.DataFrame({"text": texts, "label": [labels[i % 3] for i in range(rows)]})


def test_splits_are_disjoint_sized_and_leave_the_tuning_texts_out():
    data = frame()
    tuning = ft.tuning_texts(data, [(100, 50, 42)])
    splits, info = ft.draw_splits(data, {"train": 120, "eval": 40, "test": 80}, seed=7, exclude_texts=tuning)
    assert {name: len(split) for name, split in splits.items()} == {"train": 120, "eval": 40, "test": 80}
    ids = [set(split.index) for split in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    texts = [set(split["text"]) for split in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2]), "a repeated text in two splits"
    assert all(not (t & tuning) for t in texts)
    assert 140 <= len(tuning) <= 150  # 150 rows, a repeated text or two among them
    assert info["tuning_rows_left_out"] == int(data["text"].isin(tuning).sum())
    # The row ids point back into the data.
    assert (data.loc[splits["test"].index, "text"] == splits["test"]["text"]).all()
    # Stratified: each split keeps the classes' proportions (1:1:1 here) to within a row or two.
    assert splits["test"]["label"].value_counts().max() - splits["test"]["label"].value_counts().min() <= 2


def test_splits_are_seeded():
    data = frame()
    one, _ = ft.draw_splits(data, {"train": 60, "eval": 30, "test": 30}, seed=7)
    two, _ = ft.draw_splits(data, {"train": 60, "eval": 30, "test": 30}, seed=7)
    other, _ = ft.draw_splits(data, {"train": 60, "eval": 30, "test": 30}, seed=8)
    assert list(one["test"].index) == list(two["test"].index)
    assert list(one["test"].index) != list(other["test"].index)


def test_too_large_a_sample_is_refused_with_what_is_left():
    with pytest.raises(SystemExit, match="only 580 are left"):
        ft.draw_splits(frame(), {"train": 500, "eval": 50, "test": 50}, seed=7)


def test_the_tuning_sample_is_the_one_ablate_recipe_draws():
    data = frame()
    train, evaluation = ft.train_and_eval_sample(data, 100, 50, 42)
    assert ft.tuning_texts(data, [(100, 50, 42)]) == set(train["text"]) | set(evaluation["text"])


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y, p = rng.integers(0, 4, 50), rng.integers(0, 3, 50)  # class 3 never predicted
    assert ft.macro_f1(y, p, 4) == pytest.approx(f1_score(y, p, average="macro", zero_division=0))


def test_summary_over_seeds():
    out = ft.summary([0.6, 0.7, 0.8])
    assert out["mean"] == pytest.approx(0.7) and out["std"] == pytest.approx(0.1)
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert out["ci95_seeds"] == pytest.approx([0.7 - half, 0.7 + half], abs=1e-4)
    assert ft.summary([0.5])["std"] is None


def test_bootstrap_interval_covers_the_statistic():
    correct = np.array([1.0] * 70 + [0.0] * 30)
    ci = ft.bootstrap_cis({"accuracy": lambda i: float(correct[i].mean())}, len(correct), resamples=500)["accuracy"]
    assert ci[0] < 0.7 < ci[1] and ci[1] - ci[0] < 0.25


def test_compact_json_keeps_the_document():
    document = {"ids": [1, 2, 3], "nested": {"values": [0.5, -1e-05]}, "names": ["a", "b"], "empty": []}
    text = ft.compact_json(document)
    assert json.loads(text) == document
    assert '"ids": [1, 2, 3]' in text


def level(rps: float, p50: float, p95: float) -> dict:
    return {"requests_per_s": rps, "p50_ms": p50, "p95_ms": p95}


def test_each_step_is_compared_with_the_previous_measured_one():
    steps = [
        {"step": "naive", "load": {"1": level(50, 20, 30)}},
        {"step": "batched", "load": {"1": level(100, 10, 15)}},
        {"step": "onnx", "load": {"1": level(150, 5, 15)}},
        {"step": "int8", "load": None},
    ]
    serve.chain_ratios(steps)
    assert steps[0]["ratio_to_previous"] is None
    assert steps[1]["ratio_to_previous"]["1"] == {"requests_per_s": 2.0, "p50_ms": 0.5, "p95_ms": 0.5}
    assert steps[2]["ratio_to_previous"]["1"] == {"requests_per_s": 1.5, "p50_ms": 0.5, "p95_ms": 1.0}
    assert steps[2]["ratio_to_naive"]["1"]["requests_per_s"] == 3.0
    assert steps[3]["ratio_to_previous"] is None


def test_a_step_compared_with_a_named_one_takes_its_ratio_from_it():
    steps = [
        {"step": "naive", "load": {"1": level(50, 20, 30)}},
        {"step": "bf16", "load": {"1": level(100, 10, 15)}},
        {"step": "workers-2", "load": {"1": level(80, 12, 20)}},
        {"step": "fewer-layers", "load": {"1": level(300, 5, 10)}, "compared_with": "bf16"},
        {"step": "other", "load": {"1": level(300, 5, 10)}, "compared_with": "int8"},
    ]
    serve.chain_ratios(steps)
    assert steps[3]["ratio_to_previous"]["1"] == {"requests_per_s": 3.0, "p50_ms": 0.5, "p95_ms": 0.67}
    assert steps[3]["ratio_to_naive"]["1"]["requests_per_s"] == 6.0
    assert steps[4]["ratio_to_previous"] is None  # the step it names was not measured: no ratio rather than another's


def test_the_fewer_layers_backend_is_the_first_offered_that_passes_its_gate(monkeypatch):
    passed = {"int8_passed_gate": True}
    failed = {"int8_passed_gate": False, "int8_gate": 0.99, "int8_failure": "agrees on 90%"}
    monkeypatch.setattr(serve, "gate_openvino", lambda run, backend: {"parity": {}, "seconds": 1.0})
    assert serve.fewer_layers_backend(Path("run"), dict(passed)) == ("openvino-bf16", {})
    monkeypatch.setattr(serve, "gate_openvino", lambda run, backend: {"failure": "not offered on this CPU", "seconds": None})
    assert serve.fewer_layers_backend(Path("run"), dict(passed)) == ("onnx-int8", {"openvino-bf16": "not offered on this CPU"})
    backend, passed_over = serve.fewer_layers_backend(Path("run"), dict(failed))
    assert backend == "onnx" and list(passed_over) == ["openvino-bf16", "onnx-int8"] and "agrees on 90%" in passed_over["onnx-int8"]


def test_a_portable_step_is_gated_and_compared_with_the_six_layer_model_on_its_backend(monkeypatch):
    measured = []

    def fake_measure(served, run, texts, scored, requests, warmup, threads):
        measured.append(served)
        return {"load": {"1": level(300, 2, 3)}, "test_accuracy": 0.72}

    monkeypatch.setattr(serve, "measure", fake_measure)
    monkeypatch.setattr(serve, "gate_openvino", lambda run, backend: {"failure": "the openvino extra is not installed", "seconds": None})
    args = type("Args", (), {"requests": 10, "warmup": 1, "threads": 1})()
    steps = [{"step": "onnx-fp32", "served_as": "onnx", "load": {"1": level(100, 6, 9)}}, {"step": "onnx-int8", "served_as": "onnx-int8", "load": None}]
    failed = {"int8_passed_gate": False, "int8_gate": 0.995, "int8_failure": "agrees on 90%"}

    onnx = serve.portable_step("onnx", Path("run"), dict(failed), steps, [], {}, args)
    assert onnx["step"] == "fewer-layers-portable:onnx" and onnx["compared_with"] == "onnx-fp32"
    assert onnx["ratio_to_six_layers"]["1"] == {"requests_per_s": 3.0, "p50_ms": 0.33, "p95_ms": 0.33}
    int8 = serve.portable_step("onnx-int8", Path("run"), dict(failed), steps, [], {}, args)
    assert int8["load"] is None and "agrees on 90%" in int8["not_measured"]
    exported = dict(failed)
    openvino = serve.portable_step("openvino", Path("run"), exported, steps, [], {}, args)
    assert openvino["load"] is None and "not installed" in openvino["not_measured"] and "openvino-fp32" in exported
    assert measured == ["onnx"]  # a backend that fails its gate is never served
    passed = serve.portable_step("onnx-int8", Path("run"), {"int8_passed_gate": True}, steps, [], {}, args)
    assert passed["load"] and passed["compared_with"] is None and passed["ratio_to_six_layers"] is None  # the 6-layer int8 was not measured


def test_the_layer_rule_takes_the_fewest_candidate_layers_whose_mean_eval_accuracy_passes():
    def figures(**means):
        return {str(layers): {"mean_eval_accuracy": means.get(f"n{layers}", 0.0)} for layers in (1, 2, 3, 6)}

    assert layers_dev.choose(figures(n1=0.69, n2=0.70, n3=0.74, n6=0.78))["layers"] == 2
    assert layers_dev.choose(figures(n1=0.72, n2=0.75, n3=0.76, n6=0.78))["layers"] == 1
    assert layers_dev.choose(figures(n1=0.60, n2=0.65, n3=0.699, n6=0.78))["layers"] == 6  # none passes: no change


def test_the_int8_gate_is_the_exports_own():
    pytest.importorskip("onnxruntime")
    import inspect

    from tunelab.runtime.export import export_onnx

    assert serve.int8_gate() == inspect.signature(export_onnx).parameters["min_agreement"].default


def fake_export(monkeypatch, int8_agreement: float | None, raise_gate: bool):
    """export_onnx replaced by one that passes or fails the int8 gate as told (its signature kept)."""
    import functools

    import tunelab.runtime.export as onnx
    from tunelab.errors import TunelabError

    original, calls = onnx.export_onnx, []

    @functools.wraps(original)
    def export_onnx(run, quantize=None, **kwargs):
        calls.append((quantize, kwargs))
        if quantize == "int8" and raise_gate:
            raise TunelabError(f"the int8 model agrees with PyTorch on {int8_agreement:.2%} of the test texts (needs 99.5%)", "hint")
        return onnx.ExportReport(
            path="onnx",
            files={},
            rows=100,
            fp32_max_abs_diff=0.0,
            fp32_argmax_agreement=1.0,
            int8_argmax_agreement=int8_agreement if quantize == "int8" else None,
        )

    monkeypatch.setattr(onnx, "export_onnx", export_onnx)
    return calls


def test_a_failed_int8_gate_is_reported_not_lowered(monkeypatch):
    pytest.importorskip("onnxruntime")
    calls = fake_export(monkeypatch, 0.991, raise_gate=True)
    out = serve.export(Path("run"))
    assert calls == [("int8", {}), (None, {})], "the gate is never passed in, so never lowered"
    assert out["int8_passed_gate"] is False and out["int8_gate"] == serve.int8_gate()
    assert out["int8_argmax_agreement_at_export"] == pytest.approx(0.991)


def test_an_int8_below_the_gate_is_refused_even_if_the_export_wrote_it(monkeypatch):
    pytest.importorskip("onnxruntime")
    fake_export(monkeypatch, 0.99, raise_gate=False)
    out = serve.export(Path("run"))
    assert out["int8_passed_gate"] is False and "99.00%" in out["int8_failure"]
    fake_export(monkeypatch, 0.999, raise_gate=False)
    assert serve.export(Path("run"))["int8_passed_gate"] is True


def test_the_load_generator_counts_answers_and_failures_on_a_real_server():
    # serve_load.load is the benchmark's own HTTP/1.1 client: every request answered once, a 200 with one
    # prediction counted as served, anything else (here a full queue's 503) counted as failed, by status.
    import asyncio
    import threading

    from tests._serve_fixtures import FakeScorer, fake_model, serving
    from tunelab.serve.app import create_app
    from tunelab.serve.settings import ServeSettings

    texts = ["good film", "awful service", "a table", "ünïcode ✓"]
    with serving(create_app(lambda: fake_model(FakeScorer()), ServeSettings(), api_key="")) as url:
        result = asyncio.run(serve.load(url, texts, concurrency=4, requests=40))
    assert result["requests"] == 40 and result["failed"] == 0
    assert result["requests_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]

    gate = threading.Event()  # the first forward pass holds for a second, so a queue of one text fills up
    app = create_app(lambda: fake_model(FakeScorer(gate=gate)), ServeSettings(max_queue=1), api_key="")
    with serving(app) as url:
        opener = threading.Timer(1.0, gate.set)
        opener.start()
        result = asyncio.run(serve.load(url, texts, concurrency=3, requests=3))
        opener.join()
    assert result["requests"] == 3 and result["failed"] >= 1  # one in the forward pass, at most one queued, the rest refused
    assert result["statuses"] == {"200": 3 - result["failed"], "503": result["failed"]}


def test_the_serve_profile_puts_each_sampled_stack_in_its_stage(monkeypatch):
    # py-spy's raw lines: "frame;frame;... count". The event loop's own samples carry only its root frames,
    # among them uvicorn's _compat.py, which must not pass for fastapi's pydantic code.
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # serve_profile imports serve_load by name, as when run from its folder
    profile = load("serve_profile")
    root = "thread (1): MainThread;<module> (serve_profile.py:330);run (uvicorn/main.py:643);Server.run (uvicorn/server.py:86);asyncio_run (uvicorn/_compat.py:30);Runner.run (asyncio/runners.py:118)"
    forward = "thread (2): tunelab-forward_0;Thread.run (threading.py:982);ModelHolder.score (tunelab/serve/holder.py:73)"
    # Every request's stack starts in uvicorn's protocol and passes the middleware: its innermost named frame decides.
    request = f"{root};RequestResponseCycle.run_asgi (uvicorn/protocols/http/httptools_impl.py:416);RequestMetrics.__call__ (tunelab/serve/app.py:423)"
    raw = "\n".join(
        [
            f"{root} 4",
            f"{request};Router.__call__ (starlette/routing.py:715) 1",
            f"{request};predict_router.<locals>.predict (tunelab/serve/app.py:220);softmax (tunelab/models/classifier.py:85) 1",
            f"{root};serialize_response (fastapi/routing.py:300);validate_python (pydantic/type_adapter.py:1) 1",
            f"{forward};FallbackScorer.logits (tunelab/runtime/scorers.py:118);OnnxScorer.logits (tunelab/runtime/scorers.py:92);"
            "run_sorted (tunelab/runtime/scorers.py:157);OpenVinoSession.run (tunelab/runtime/scorers.py:233) 10",
            f"{forward};FallbackScorer.rescore (tunelab/runtime/scorers.py:125);OpenVinoSession.run (tunelab/runtime/scorers.py:233) 2",
            f"{forward};run_sorted (tunelab/runtime/scorers.py:150);tokenize (tunelab/textpairs.py:38) 1",
            "thread (2): tunelab-forward_0;Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83) 2",
        ]
    )
    shares = profile.stack_shares(raw)
    assert shares["samples"] == 22
    assert shares["share"] == {
        "forward (model run)": round(10 / 22, 3),
        "event loop and hand-offs (asyncio, uvloop, executor)": round(4 / 22, 3),
        "rescore (fp32 forward of near ties)": round(2 / 22, 3),
        "forward thread waiting for a batch": round(2 / 22, 3),
        "ASGI framework (starlette, fastapi, middleware)": round(1 / 22, 3),
        "route code (softmax, describe)": round(1 / 22, 3),
        "pydantic validation and JSON": round(1 / 22, 3),
        "tokenize": round(1 / 22, 3),
    }


def test_a_reused_export_reports_the_gates_its_parity_file_recorded(tmp_path):
    (tmp_path / "onnx").mkdir()
    parity = {"fp32_argmax_agreement": 1.0, "int8_argmax_agreement": 0.99, "openvino-int8": {"argmax_agreement": 1.0, "fp32_fallback_margin": 0.2}}
    (tmp_path / "onnx" / "parity.json").write_text(json.dumps(parity))
    out = serve.reused_export(tmp_path)
    assert out["int8_passed_gate"] is False and out["int8_failure"]  # 0.99 < the export's gate: onnx-int8 is not served
    assert out["openvino"] == {"parity": parity["openvino-int8"], "seconds": None}
    assert "openvino-int8" not in out["parity"] and out["parity"]["fp32_argmax_agreement"] == 1.0

    parity.update(int8_argmax_agreement=serve.int8_gate())
    del parity["openvino-int8"]
    (tmp_path / "onnx" / "parity.json").write_text(json.dumps(parity))
    out = serve.reused_export(tmp_path)
    assert out["int8_passed_gate"] is True and out["int8_failure"] is None
    assert "failure" in out["openvino"]
