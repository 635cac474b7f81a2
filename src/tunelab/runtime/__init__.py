"""The inference runtime of a run's forward passes that do not train: PyTorch, ONNX Runtime or OpenVINO.

`scorers.py` (one texts -> logits interface over PyTorch, ONNX Runtime and OpenVINO, bounded intra-op threads),
`export.py` (ONNX fp32 and int8 exports checked against PyTorch: `tunelab export`, and first use),
`openvino_export.py` (the OpenVINO backends' gate figures and NNCF's int8, on first use and `tunelab export --format openvino`),
`tagger.py` (a token-classification run's word tags and entity spans, on any of its backends' forward passes),
`token_export.py` (the tagger's ONNX fp32 and int8 exports, checked on word tags),
`choice.py` (`load_scorer(run, backend)`: one of tunelab.backends.CHOICES, each backend behind its parity gate;
`load_multilabel`, a multi-label run's (gated on label sets); `load_tagger`, the same for a tagger; auto's measured
choice cached in the run; `choose`, the same rule for any target). The service, `predict`, `eval` and compare's
latency all load through it, whatever the task; tunelab.rag.embed_choice applies `choose` and the exporters to
embedding models.
"""

from tunelab.backends import BACKENDS, CHOICES
from tunelab.runtime.choice import choose_backend, load_multilabel, load_scorer, load_tagger
from tunelab.runtime.scorers import Scorer

__all__ = ["BACKENDS", "CHOICES", "Scorer", "choose_backend", "load_multilabel", "load_scorer", "load_tagger"]
