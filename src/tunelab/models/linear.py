"""Logistic regression on TF-IDF n-grams or frozen sentence embeddings: fit, choose C, score.

The shared part of the scikit-learn baselines: `tunelab compare`'s candidates (tunelab.training.baselines,
which makes them run directories) and the baseline every evaluation report shows
(tunelab.evaluation.baseline, fitted on a run's own splits) both fit through `fit_logreg`, so there
is one `tfidf-logreg`. C is always chosen on the eval split, never on the rows that are scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunelab.errors import TunelabError
from tunelab.run import Run

C_GRID = (0.1, 1.0, 10.0, 100.0)  # regularisation strengths tried on the eval split when C is not given
MAX_ITER = 2000
MAX_FEATURES = 100_000  # tfidf-logreg: vocabulary size
NGRAM_MAX = 2  # tfidf-logreg: longest word n-gram


@dataclass(frozen=True)
class LinearSettings:
    """What a fit needs; tunelab.training.baselines.BaselineConfig has the same fields (and these defaults)."""

    method: str = "tfidf-logreg"
    C: float | None = None
    max_iter: int = MAX_ITER
    max_features: int = MAX_FEATURES
    ngram_max: int = NGRAM_MAX
    seed: int = 42


# -- the scorer: what evaluate, compare and predict-like code call -----------------------------------


class BaselineClassifier:
    """A loaded baseline with the Classifier interface: `.labels`, `.logits()`, `.predict_proba()`."""

    def __init__(self, pipeline, labels: list[str], encoder=None, embed_batch_size: int = 64):
        self.pipeline = pipeline  # TF-IDF + LR, or LR alone on embeddings
        self.labels = labels
        self.encoder = encoder
        self.embed_batch_size = embed_batch_size

    @classmethod
    def load(cls, run: Run | str | os.PathLike) -> BaselineClassifier:
        import joblib

        run = run if isinstance(run, Run) else Run.open(run)
        if run.kind != "sklearn":
            raise TunelabError(f"run '{run.path}' is not a scikit-learn baseline", "load it with tunelab.predict")
        encoder = None
        if run.config.get("method") == "embeddings-logreg":
            encoder = load_encoder(run.path / "encoder", run.config.get("max_length"))
        return cls(joblib.load(run.path / "model.joblib"), run.labels, encoder, run.config.get("embed_batch_size", 64))

    def features(self, texts: Sequence[str]):
        if self.encoder is None:
            return list(texts)
        return embed(self.encoder, texts, self.embed_batch_size)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] | None = None) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)))
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            out[start : start + len(chunk)] = self.pipeline.predict_proba(self.features(chunk))
            if progress:
                progress(len(chunk))
        return out

    def logits(self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] | None = None) -> np.ndarray:
        # log-probabilities: their softmax gives the probabilities back, as a model's logits would.
        return np.log(np.clip(self.predict_proba(texts, batch_size, progress), 1e-12, None)).astype(np.float32)


def load_encoder(folder: str | os.PathLike, max_length: int | None = None):
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    encoder.eval()
    if max_length:
        encoder.max_seq_length = max_length
    return encoder


def embed(encoder, texts: Sequence[str], batch_size: int) -> np.ndarray:
    # Unit vectors: logistic regression's regularisation then treats every text alike.
    return encoder.encode(list(texts), batch_size=batch_size, show_progress_bar=False, normalize_embeddings=True, convert_to_numpy=True)


# -- fitting -----------------------------------------------------------------------------------------


def fit_logreg(config: LinearSettings, features: dict[str, Any], y: dict[str, np.ndarray], classes: int):
    """Logistic regression fitted on features["train"] for each C; the best on the eval split wins (test is never seen).

    config: a LinearSettings, or a BaselineConfig (the same fields). Returns the fitted pipeline, its C,
    its train/eval scores, and every (pipeline, C, scores) tried.
    """
    candidates = [config.C] if config.C else list(C_GRID)
    searched = []
    for c in candidates:
        pipeline = build_pipeline(config, c)
        pipeline.fit(features["train"], y["train"])
        searched.append((pipeline, c, eval_scores(pipeline, features, y, classes)))
    pipeline, chosen_c, scores = max(searched, key=lambda item: (item[2]["eval_accuracy"], -item[2]["eval_loss"]))
    return pipeline, chosen_c, scores, searched


def fit_tfidf_logreg(texts: dict[str, Sequence[str]], y: dict[str, np.ndarray], labels: list[str], seed: int = 42) -> tuple[BaselineClassifier, float]:
    """The `tfidf-logreg` baseline with its default settings, fitted on given rows instead of a data source.

    texts/y: "train" and "eval" texts and label ids (indexes into `labels`, every label present in train).
    What evaluate_run fits on a run's own splits to show next to the model; `tunelab compare`'s
    tfidf-logreg candidate, with default settings, fits the same. Returns the scorer and the chosen C.
    """
    config = LinearSettings(method="tfidf-logreg", seed=seed)
    features = {name: list(texts[name]) for name in ("train", "eval")}
    pipeline, chosen_c, _, _ = fit_logreg(config, features, y, len(labels))
    return BaselineClassifier(pipeline, labels), chosen_c


def fit_tfidf_ovr(texts: dict[str, Sequence[str]], y: dict[str, np.ndarray], labels: list[str], seed: int = 42) -> tuple[Any, float, dict[str, Any]]:
    """The multi-label baseline: TF-IDF + one logistic regression per label (one-vs-rest), fitted by `fit_ovr`.

    texts/y: "train" and "eval" texts and (rows, labels) 0/1 targets. Returns the fitted pipeline (its
    predict_proba gives per-label probabilities), C and the thresholds.
    """
    features = {name: list(texts[name]) for name in ("train", "eval")}
    pipeline, chosen_c, thresholds, _ = fit_ovr(LinearSettings(method="tfidf-logreg", seed=seed), features, y, labels)
    return pipeline, chosen_c, thresholds


def fit_ovr(config: LinearSettings, features: dict[str, Any], y: dict[str, np.ndarray], labels: list[str]) -> tuple[Any, float, dict[str, Any], float]:
    """One logistic regression per label (one-vs-rest) on features["train"]; C chosen on the eval split.

    features: texts (tfidf-logreg) or vectors (embeddings-logreg); y: (rows, labels) 0/1 targets. For each C
    of the grid the thresholds are chosen on the eval split as the fine-tuned model's are
    (tunelab.models.multilabel.choose_thresholds); the C with the best eval micro-F1 wins. Returns the
    fitted pipeline, C, the thresholds and that eval micro-F1.
    """
    from sklearn.metrics import f1_score
    from threadpoolctl import threadpool_limits

    from tunelab.models.multilabel import choose_thresholds, decide

    described = f"the eval split ({len(features['eval'])} rows)"
    best = None
    for c in [config.C] if config.C else C_GRID:
        pipeline = build_pipeline(config, c, one_vs_rest=True)
        # One BLAS thread: these many small fits ran 20x slower on two threads of a busy 2-core machine (1 s against 0.05 s each).
        with threadpool_limits(1):
            pipeline.fit(features["train"], y["train"])
        proba = pipeline.predict_proba(features["eval"])
        thresholds = choose_thresholds(y["eval"], proba, labels, described)
        score = float(f1_score(y["eval"], decide(proba, thresholds["values"]), average="micro", zero_division=0))
        if best is None or score > best[3]:
            best = (pipeline, c, thresholds, score)
    return best


def build_pipeline(config: LinearSettings, c: float, one_vs_rest: bool = False):
    """TF-IDF (unless the features are embeddings) + logistic regression; one_vs_rest: one per label, for 0/1 label matrices."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    logreg = LogisticRegression(C=c, max_iter=config.max_iter, random_state=config.seed)
    if one_vs_rest:
        logreg = OneVsRestClassifier(logreg)
    if config.method == "embeddings-logreg":
        return make_pipeline(logreg)
    tfidf = TfidfVectorizer(ngram_range=(1, config.ngram_max), max_features=config.max_features, sublinear_tf=True, min_df=1)
    return make_pipeline(tfidf, logreg)


def eval_scores(pipeline, features: dict[str, Any], y: dict[str, np.ndarray], classes: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, log_loss

    scores = {}
    for name in ("train", "eval"):
        proba = pipeline.predict_proba(features[name])
        prefix = "" if name == "train" else "eval_"
        scores[f"{prefix}loss"] = float(log_loss(y[name], proba, labels=list(range(classes))))
        scores[f"{'train' if name == 'train' else 'eval'}_accuracy"] = float(accuracy_score(y[name], proba.argmax(axis=1)))
    return scores
