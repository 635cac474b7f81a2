"""The inference runtime of a classifier run's forward passes that do not train: PyTorch or ONNX Runtime.

`scorers.py` (one texts -> logits interface over PyTorch and ONNX Runtime, bounded intra-op threads),
`export.py` (ONNX fp32 and int8 exports checked against PyTorch: `tunelab export`, and first use),
`choice.py` (`load_scorer(run, backend)`: torch, onnx, onnx-int8 or auto, each behind its parity gate;
auto's measured choice cached in the run; `choose`, the same rule for any target). The service, `predict` and `eval`
all load through it; tunelab.rag.embed_choice applies `choose` and the exporter to embedding models.
"""

from tunelab.runtime.choice import CHOICES, choose_backend, load_scorer
from tunelab.runtime.scorers import BACKENDS, Scorer

__all__ = ["BACKENDS", "CHOICES", "Scorer", "choose_backend", "load_scorer"]
