"""Text -> unit vectors with a sentence-transformers model from a local folder: in PyTorch (`SentenceEmbedder`)
or as the graph exported by tunelab.runtime.export, in ONNX Runtime or OpenVINO (`OnnxEmbedder`). Which one embeds an index
is tunelab.rag.embed_choice's job; both answer `encode` and `encode_query` and say their `backend`."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunelab.models.catalogue import resolve_model
from tunelab.progress import progress_bar


class SentenceEmbedder:
    """all-MiniLM-L6-v2 (`minilm`) or any local sentence-transformers folder, in PyTorch."""

    backend = "torch"

    def __init__(self, model: str | Path = "minilm", bf16: bool | None = None):
        import torch
        from sentence_transformers import SentenceTransformer

        from tunelab.hardware import cpu_bf16_is_fast

        path = resolve_model(model)
        self.name = str(model)
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        self.max_tokens = int(self.model.max_seq_length or 256)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        # AMX / AVX512-BF16 CPUs run bf16 matmuls about twice as fast as fp32, with embeddings that agree
        # to cosine 0.9999 on MiniLM; elsewhere bf16 is emulated and slower. The CPU's rule, not
        # hardware.bf16_is_fast's: this model runs on the CPU even on a machine with a GPU.
        self.bf16 = cpu_bf16_is_fast() if bf16 is None else bf16
        self._torch = torch

    def _autocast(self):
        if self.bf16:
            return self._torch.autocast("cpu", dtype=self._torch.bfloat16)
        return contextlib.nullcontext()

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Sorting by length keeps padding small; slices let a progress bar move.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        step = batch_size * 8
        bar = progress_bar(progress)
        with bar as task_bar, self._torch.inference_mode(), self._autocast():
            task = task_bar.add_task("embedding", total=len(texts)) if task_bar else None
            for start in range(0, len(texts), step):
                index = order[start : start + step]
                vectors = self.model.encode(
                    [texts[i] for i in index],
                    batch_size=batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                out[index] = vectors.astype(np.float32)
                if task_bar:
                    task_bar.advance(task, len(index))
        return out

    def encode_query(self, text: str) -> np.ndarray:
        """One short text, fast: fp32 on a single thread.

        For a handful of tokens, a second thread only adds synchronisation, and on a busy machine
        (other processes on the cores) two spinning OpenMP threads made one query 10x slower in
        our measurements. Casting the weights to bf16 on every call costs more than it saves.
        """
        threads = self._torch.get_num_threads()
        self._torch.set_num_threads(1)
        try:
            with self._torch.inference_mode():
                vector = self.model.encode([text], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        finally:
            self._torch.set_num_threads(threads)
        return vector[0].astype(np.float32)


class OnnxEmbedder:
    """The same model exported to ONNX (fp32 or int8), run by ONNX Runtime or, for the `openvino*` backends, by OpenVINO
    (the ONNX graph or its OpenVINO IR): the graph pools, this class normalises, as PyTorch's encode does."""

    def __init__(self, model: str | Path, backend: str, onnx_file: Path, max_tokens: int, dim: int, threads: int | None = None):
        from transformers import AutoTokenizer

        from tunelab.runtime.scorers import open_session

        self.name = str(model)
        self.backend = backend
        self.session = open_session(onnx_file, backend, threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(model)))
        self.max_tokens = max_tokens
        self.dim = dim

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        from tunelab.runtime.scorers import run_sorted

        # sentence-transformers strips each text before tokenizing; so must we, or the vectors differ.
        texts = [str(text).strip() for text in texts]
        with progress_bar(progress and len(texts) > 0) as task_bar:
            task = task_bar.add_task("embedding", total=len(texts)) if task_bar else None
            advance = (lambda n: task_bar.advance(task, n)) if task_bar else None
            vectors = run_sorted(self.session, self.tokenizer, self.max_tokens, texts, batch_size, "sentence_embedding", self.dim, advance)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]
