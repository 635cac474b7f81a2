"""An extractive reader: the answer is a span of one of the given passages, or it abstains.

Shared by `tunelab train --task extractive-qa` (labels and test scoring) and RAG (the reader), so
both cut passages into windows and pick spans the same way.

Rules (SQuAD 2.0 as in transformers' run_qa post-processing):
  windows     question first, passage second, truncation="only_second"; a passage longer than the
              window is cut into windows sharing `doc_stride` tokens
  best span   over every window of every passage: the top-20 start x top-20 end tokens, both inside
              the passage part (sequence id 1), end >= start, at most max_answer_tokens long;
              score = start logit + end logit
  null score  start + end logit at [CLS], the *minimum* over the question's windows: a window that
              cannot see the answer always votes "no answer", so the least confident vote counts
  abstain     when margin = score - null score is below the threshold (0.0 unless a run chose one)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tunelab.answers import ABSTENTION
from tunelab.errors import TunelabError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOP_K = 20
DEFAULT_MAX_LENGTH = 384  # transformers' run_qa default, used for a bare model folder
DEFAULT_DOC_STRIDE = 64
DEFAULT_MAX_ANSWER_TOKENS = 30


# windows -------------------------------------------------------------------------------------
def encode_windows(tokenizer, questions: Sequence[str], contexts: Sequence[str], max_length: int, doc_stride: int):
    """Tokenize (question, context) pairs into windows of at most max_length tokens, unpadded.

    The result holds input_ids, attention_mask (and token_type_ids), offset_mapping (character
    offsets into the context for its tokens) and overflow_to_sample_mapping (window -> pair);
    `result.sequence_ids(i)` tells question (0), context (1) and special (None) tokens apart.
    A question is cut to half the window so the context always has room, and the stride is
    capped at half the context room so consecutive windows always move forward.
    """
    questions = [q.strip() for q in questions]
    budget = max(1, max_length // 2)
    spans = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    questions = [q if len(offsets) <= budget else q[: offsets[budget - 1][1]] for q, offsets in zip(questions, spans)]
    longest = max((min(len(offsets), budget) for offsets in spans), default=0)
    room = max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
    if room < 1:
        raise TunelabError(f"max length {max_length} leaves no room for the context", "use a larger --max-length")
    stride = max(0, min(doc_stride, room // 2))
    return tokenizer(
        questions,
        list(contexts),
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def cls_index(input_ids: Sequence[int], tokenizer) -> int:
    """Where "no answer" points: the [CLS] token (index 0 for BERT-style right-padded input)."""
    cls = tokenizer.cls_token_id
    return list(input_ids).index(cls) if cls is not None and cls in input_ids else 0


def context_mask(sequence_ids: Sequence[int | None]) -> np.ndarray:
    return np.array([s == 1 for s in sequence_ids], dtype=bool)


def best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    in_context: np.ndarray,
    max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
    top_k: int = TOP_K,
) -> tuple[float, int, int] | None:
    """(score, start token, end token) of the best span of one window, or None if it has no valid span."""
    start = np.where(in_context, start_logits, -np.inf)
    end = np.where(in_context, end_logits, -np.inf)
    starts = np.argsort(-start, kind="stable")[:top_k]
    ends = np.argsort(-end, kind="stable")[:top_k]
    scores = start[starts][:, None] + end[ends][None, :]
    length = ends[None, :] - starts[:, None] + 1
    scores = np.where((length >= 1) & (length <= max_answer_tokens), scores, -np.inf)
    flat = int(np.argmax(scores))
    best = float(scores.flat[flat])
    if not math.isfinite(best):
        return None
    i, j = divmod(flat, scores.shape[1])
    return best, int(starts[i]), int(ends[j])


# results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    text: str
    passage: int
    char_start: int
    char_end: int


@dataclass(frozen=True)
class ReadResult:
    """The reader's answer. `candidate` is the best span whatever the threshold (None if no passage
    had one): what a threshold is chosen on."""

    text: str  # the span, or ABSTENTION
    passage: int | None  # index into the passages; None when abstaining
    char_start: int | None
    char_end: int | None
    score: float  # start + end logit of the best span (-inf without a candidate)
    null_score: float  # start + end logit at [CLS], minimum over the windows
    margin: float  # score - null_score
    abstained: bool
    candidate: Span | None = None

    def at_threshold(self, threshold: float) -> ReadResult:
        """The same reading decided with another threshold (no forward pass)."""
        return _decide(self.candidate, self.score, self.null_score, threshold)


def _decide(candidate: Span | None, score: float, null_score: float, threshold: float) -> ReadResult:
    margin = score - null_score
    if candidate is None or margin < threshold:
        return ReadResult(ABSTENTION, None, None, None, score, null_score, margin, True, candidate)
    return ReadResult(candidate.text, candidate.passage, candidate.char_start, candidate.char_end, score, null_score, margin, False, candidate)


# the reader ----------------------------------------------------------------------------------
@dataclass
class ExtractiveReader:
    model: torch.nn.Module
    tokenizer: object
    max_length: int = DEFAULT_MAX_LENGTH
    doc_stride: int = DEFAULT_DOC_STRIDE
    max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS
    null_threshold: float = 0.0
    precision: str = "fp32"

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        threads: int | None = None,
        precision: str = "auto",
        null_threshold: float | None = None,
    ) -> ExtractiveReader:
        """A run directory of `tunelab train --task extractive-qa` (its window settings and the
        threshold it chose), or any Hugging Face question-answering model folder."""
        from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

        from tunelab import hardware
        from tunelab.models.classifier import model_max_length
        from tunelab.run import Run

        path = Path(getattr(path, "path", path)).expanduser()
        settings: dict = {}
        if (path / "config.yaml").is_file():
            run = Run.open(path)
            if run.task != "extractive-qa":
                raise TunelabError(f"run '{path}' is a {run.task} run, not an extractive-qa one", "train a reader with --task extractive-qa")
            model_dir = run.model_dir
            settings = {k: run.config[k] for k in ("max_length", "doc_stride", "max_answer_tokens") if run.config.get(k) is not None}
            chosen = run.metrics.get("null_threshold", {}).get("value")
            if chosen is not None:
                settings["null_threshold"] = float(chosen)
        elif (path / "config.json").is_file():
            model_dir = path
        else:
            raise TunelabError(f"'{path}' is neither a tunelab run nor a Hugging Face model folder", "pass a run directory or a model folder")
        if null_threshold is not None:
            settings["null_threshold"] = float(null_threshold)
        hardware.set_threads(threads)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.padding_side = "right"  # [CLS] stays at index 0 of every padded window
        model = AutoModelForQuestionAnswering.from_pretrained(model_dir)
        model.eval()
        if "max_length" not in settings:
            settings["max_length"] = min(DEFAULT_MAX_LENGTH, model_max_length(AutoConfig.from_pretrained(model_dir), tokenizer))
        return cls(model, tokenizer, precision=hardware.resolve_precision(precision), **settings)

    def read(self, question: str, passages: Sequence[str]) -> ReadResult:
        """The best span of any passage, or an abstention; all windows in one forward pass."""
        return self.read_many([question], [passages], batch_size=None)[0]

    def read_many(
        self,
        questions: Sequence[str],
        passages_per_question: Sequence[Sequence[str]],
        batch_size: int | None = 32,
    ) -> list[ReadResult]:
        """read() for many questions; windows of similar length are batched together (batch_size windows;
        None: all in one pass)."""
        if len(questions) != len(passages_per_question):
            raise ValueError("one list of passages per question")
        pairs = [(q, p, qi, pi) for qi, (q, passages) in enumerate(zip(questions, passages_per_question)) for pi, p in enumerate(passages)]
        best: list[tuple[float, Span] | None] = [None] * len(questions)
        null = [math.inf] * len(questions)
        if pairs:
            encoded = encode_windows(self.tokenizer, [p[0] for p in pairs], [p[1] for p in pairs], self.max_length, self.doc_stride)
            owner = encoded["overflow_to_sample_mapping"]
            for window, (start_logits, end_logits) in self._logits(encoded, batch_size):
                question, passage_index, text = pairs[owner[window]][2], pairs[owner[window]][3], pairs[owner[window]][1]
                cls = cls_index(encoded["input_ids"][window], self.tokenizer)
                null[question] = min(null[question], float(start_logits[cls] + end_logits[cls]))
                found = best_span(start_logits, end_logits, context_mask(encoded.sequence_ids(window)), self.max_answer_tokens)
                if found is None:
                    continue
                score, first, last = found
                if best[question] is None or score > best[question][0]:
                    offsets = encoded["offset_mapping"][window]
                    char_start, char_end = offsets[first][0], offsets[last][1]
                    best[question] = (score, Span(text[char_start:char_end], passage_index, char_start, char_end))
        results = []
        for found, null_score in zip(best, null):
            null_score = null_score if math.isfinite(null_score) else 0.0  # no passage at all
            score, span = found if found is not None else (-math.inf, None)
            results.append(_decide(span, score, null_score, self.null_threshold))
        return results

    @torch.inference_mode()
    def _logits(self, encoded, batch_size: int | None):
        """(window index, (start logits, end logits)) for every window, unpadded."""
        inputs = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded]
        count = len(encoded["input_ids"])
        order = sorted(range(count), key=lambda i: len(encoded["input_ids"][i]))
        size = batch_size or count
        autocast = torch.autocast("cuda" if self.model.device.type == "cuda" else "cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")
        for begin in range(0, count, size):
            index = order[begin : begin + size]
            batch = self.tokenizer.pad({name: [encoded[name][i] for i in index] for name in inputs}, return_tensors="pt")
            with autocast:
                output = self.model(**{k: v.to(self.model.device) for k, v in batch.items()})
            starts, ends = output.start_logits.float().cpu().numpy(), output.end_logits.float().cpu().numpy()
            for row, window in enumerate(index):
                length = len(encoded["input_ids"][window])
                yield window, (starts[row, :length], ends[row, :length])


def choose_threshold(margins: Sequence[float], right: Sequence[bool], beyond: float = 1.0) -> float:
    """The margin threshold maximising right - hallucinated over questions whose unthresholded
    answers are known to be right or wrong (answer when margin >= threshold; unanswerable questions
    count as wrong; -inf margins are never answered); ties go to the lowest threshold; 0.0 without
    a finite margin. One feature of tunelab.answers.choose_thresholds."""
    from tunelab.answers import choose_thresholds

    margins = np.asarray(margins, dtype=float)
    right = np.asarray(right, dtype=bool)
    if margins.shape != right.shape:
        raise ValueError("one right/wrong flag per margin")
    (threshold,), _ = choose_thresholds([margins], np.where(right, 1.0, -1.0), margin=beyond)
    return threshold
