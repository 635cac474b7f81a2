"""The names of the inference backends: what `--backend` takes on predict, eval, serve and compare, and the help that says so.

Names only (no torch, no ONNX Runtime), so the CLI declares its options without loading a runtime;
tunelab.runtime.scorers opens each backend, tunelab.runtime.choice chooses among them, and
tunelab.rag.embed_choice applies the same choice to embedding models.
"""

from __future__ import annotations

# torch first: the reference every other backend is gated against.
BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8", "openvino-bf16")
OPENVINO_BACKENDS: tuple[str, ...] = ("openvino", "openvino-int8", "openvino-bf16")  # the optional `openvino` extra
# Offered only on a CPU with bf16 arithmetic (tunelab.hardware.cpu_bf16_is_fast: AVX-512 BF16 or AMX); elsewhere bf16 is emulated.
BF16_BACKENDS: tuple[str, ...] = ("openvino-bf16",)
CHOICES: tuple[str, ...] = (*BACKENDS, "auto")
# The help of every command that takes --backend for a run (predict, eval, serve, registry serve, compare).
CHOICES_HELP = (
    f"{', '.join(BACKENDS)} (each but torch exported on first use and used only if it passes its parity gate; "
    "openvino* need the openvino extra, openvino-bf16 a CPU with AVX-512 BF16 or AMX) or auto: the fastest that passes on this CPU"
)
