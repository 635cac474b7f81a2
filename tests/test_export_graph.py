"""A BERT-family model is exported by the TorchScript exporter with its attention written out (the graph ONNX Runtime runs
fastest, benchmarks/onnx_exporter_dev.py), its dynamic axes hold, and exporting leaves the model as it was."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")


def test_a_bert_classifier_is_exported_by_torchscript_with_eager_attention_and_left_as_it_was(tiny_bert, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.runtime.export import export_graph

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    attention = model.config._attn_implementation
    graph = tmp_path / "model.onnx"
    exported_with = []
    export = torch.onnx.export

    def recording(*args, **kwargs):
        exported_with.append((kwargs["dynamo"], model.config._attn_implementation))
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", recording)
    export_graph(model, lambda m, inputs: m(**inputs).logits, tokenizer, 64, graph, "logits")

    assert exported_with == [(False, "eager")]
    assert not model.training, "the exporter left the model in training mode (dropout on)"
    assert model.config._attn_implementation == attention
    # Dynamic batch and sequence axes: texts of other lengths and counts than the traced sample give PyTorch's logits.
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    for texts in (["one"], ["a b c d e f g h i j k l m n o p", "x", "a medium text here"]):
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected = model(**batch).logits.numpy()
        got = session.run(None, {i.name: batch[i.name].numpy() for i in session.get_inputs()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4)
