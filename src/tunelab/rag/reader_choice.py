"""Which reader answers (`rag ask` / `rag eval --answer`): the built-in extractive reader, an extractive
run, or a causal LM; the context it reads and the thresholds it answers above, each with where it came
from (the reader's rag_reader.json, chosen on train questions, the command line, or the defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.rag.answer import MIN_SIMILARITY
from tunelab.rag.reader_data import ContextSettings

CHOSEN_ON_TRAIN = "rag_reader.json (chosen on train)"
DEFAULT = "default"
LM_MODEL = "smollm2"
LM_MAX_NEW_TOKENS = 24
LM_DECODING = "grounded"

# Each option's command-line flag, for messages that name what the user typed.
FLAGS = {
    "reader": "--reader",
    "model": "--model",
    "decoding": "--decoding",
    "mode": "--mode",
    "k": "-k",
    "context": "--context",
    "lines": "--lines",
    "scope": "--scope",
    "min_similarity": "--min-similarity",
    "max_new_tokens": "--max-new-tokens",
}


@dataclass
class ReaderChoice:
    """A loaded reader, the context it reads and the thresholds it answers above, with where each came from."""

    reader: object
    settings: ContextSettings
    min_similarity: float
    min_confidence: float | None  # None: the reader is never thresholded on its own confidence
    sources: dict[str, str]
    require_named_document: bool = False  # answers only from a document the question names (chosen on train)

    @property
    def name(self) -> str:
        return self.reader.name

    def thresholds(self) -> dict:
        return {
            "min_similarity": round(self.min_similarity, 4),
            "min_similarity_from": self.sources["min_similarity"],
            "min_confidence": None if self.min_confidence is None else round(self.min_confidence, 4),
            "min_confidence_from": self.sources["min_confidence"],
            "require_named_document": self.require_named_document,
        }

    def answer_options(self) -> dict:
        """What rag.answer.answer / answer_many take from this choice besides the reader."""
        return {"settings": self.settings, "min_similarity": self.min_similarity, "require_named_document": self.require_named_document}


@dataclass
class ReaderOptions:
    """What the user said about the reader; None = not given (use the reader's own settings, else the defaults)."""

    reader: str | None = None
    model: str | None = None
    decoding: str | None = None
    mode: str | None = None
    k: int | None = None
    context: str | None = None
    lines: int | None = None
    min_similarity: float | None = None
    max_new_tokens: int | None = None
    scope: str | None = None

    def given(self) -> list[str]:
        return [flag for name, flag in FLAGS.items() if getattr(self, name) is not None]

    def kind(self) -> str:
        """builtin, lm or run; checks the options before anything is loaded."""
        kind = "builtin" if self.reader in (None, "builtin") else "lm" if self.reader == "lm" else "run"
        if kind == "run" and not Path(self.reader).expanduser().is_dir():
            raise TunelabError(
                f"--reader '{self.reader}' is not 'builtin', 'lm' or a run directory",
                "pass a run of tunelab rag train-reader (or tunelab train --task extractive-qa), --reader builtin or --reader lm",
            )
        if kind != "lm":
            for flag, value in (("--decoding", self.decoding), ("--model", self.model), ("--max-new-tokens", self.max_new_tokens)):
                if value is not None:
                    raise TunelabError(f"{flag} applies only to --reader lm", f"drop {flag}, or add --reader lm to read with a causal LM")
        for flag, value in (("-k", self.k), ("--lines", self.lines), ("--max-new-tokens", self.max_new_tokens)):
            if value is not None and value < 1:
                raise TunelabError(f"{flag} must be at least 1, not {value}", f"e.g. {flag} 5")
        return kind


def load_reader(options: ReaderOptions, progress: bool = True) -> ReaderChoice:
    """The reader options.reader names: the built-in one (trained once, cached), an extractive run, or a causal LM."""
    from tunelab.rag.train_reader import read_reader_settings

    kind = options.kind()
    saved = None
    if kind == "lm":
        from tunelab.lm.generate import Generator
        from tunelab.rag.readers import LMReader

        reader = LMReader(
            Generator(options.model or LM_MODEL),
            decoding=str(options.decoding or LM_DECODING),
            max_new_tokens=options.max_new_tokens or LM_MAX_NEW_TOKENS,
        )
        min_confidence, confidence_from = None, "none (an LM reader is not thresholded on its confidence)"
    else:
        from tunelab.rag.readers import SpanReader

        if kind == "builtin":
            from tunelab.rag.builtin import builtin_reader

            run = builtin_reader(progress)
        else:
            run = Path(options.reader).expanduser()
        saved = read_reader_settings(run)
        reader = SpanReader(run, threshold=saved[1].min_confidence if saved else None)
        min_confidence = reader.threshold
        confidence_from = CHOSEN_ON_TRAIN if saved else "the run's null_threshold (chosen on its eval split)"
    settings = saved[0] if saved else ContextSettings()
    overrides = {
        "mode": None if options.mode is None else str(options.mode),
        "k": options.k,
        "context": None if options.context is None else str(options.context),
        "lines": options.lines,
        "scope": None if options.scope is None else str(options.scope),
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    settings = replace(settings, **overrides)
    context_from = ("rag_reader.json (the reader's training context)" if saved else DEFAULT) + (
        f", with {', '.join(overrides)} from the command line" if overrides else ""
    )
    if options.min_similarity is not None:
        min_similarity, similarity_from = options.min_similarity, "--min-similarity"
    elif saved:
        min_similarity, similarity_from = saved[1].min_similarity, CHOSEN_ON_TRAIN
    else:
        min_similarity, similarity_from = MIN_SIMILARITY, DEFAULT
    if min_confidence is not None and not math.isfinite(min_confidence):
        min_confidence = None
    return ReaderChoice(
        reader,
        settings,
        float(min_similarity),
        min_confidence,
        {"context": context_from, "min_similarity": similarity_from, "min_confidence": confidence_from},
        require_named_document=bool(saved and saved[1].require_named_document),
    )
