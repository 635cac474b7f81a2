"""A quick signal on factbook-resources' train + eval rows (the test rows are never read): which text features carry the labels?

Written for issue #22 after every full fine-tune lost eval micro-F1 to TF-IDF; its figures motivated the two candidates
multilabel_dev.py declares last (the head alone on the frozen encoder, LoRA), both at 512 tokens. Not a benchmark of
tunelab's training: no model is fine-tuned, and the settings are simpler than any run's, the same for every feature set:

    rows        for each seed, that seed's train + eval rows (benchmarks/multilabel.py's split settings); test rows dropped
    scoring     5-fold cross-validation over those rows (seeded), one-vs-rest logistic regression at a fixed C
                (TF-IDF 10, the C the evaluation baseline chose on eval for seed 0; embeddings 1), out-of-fold probabilities; micro-F1 at the one
                global threshold (0.05 to 0.90) that is best over all labels: the same optimistic choice for every set
    features    tfidf                TF-IDF word 1-2-grams, sublinear tf (not the evaluation baseline's exact settings)
                first256, first512   the frozen MiniLM's masked mean of the last hidden states over the first N tokens
                mean_windows256      the mean of those over 256-token windows (stride 64) covering the whole text
                max_windows256       one probe over every window (each labelled with its text's labels), a text's
                                     probability the max over its windows

    python benchmarks/multilabel_probe_cv.py     # prints one JSON document, mean and sd over seeds 0-2, and the CPU
"""

from __future__ import annotations

import json
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402
from sklearn.model_selection import KFold  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

from tunelab import hardware  # noqa: E402
from tunelab.config import MultiLabelConfig  # noqa: E402
from tunelab.data.multilabel import label_vocabulary, load_multilabel_splits, multi_hot  # noqa: E402
from tunelab.models.catalogue import resolve_model  # noqa: E402

SEEDS = (0, 1, 2)
FOLDS = 5
THRESHOLDS = np.arange(0.05, 0.95, 0.05)
FEATURES = ("tfidf", "first256", "first512", "mean_windows256", "max_windows256")


def window_embeddings(model, tokenizer, texts: list[str], length: int, stride: int, whole_text: bool) -> list[np.ndarray]:
    """Per text, the masked mean of the last hidden states of each window (one window: the first `length` tokens)."""
    out = []
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=length, stride=stride, return_overflowing_tokens=whole_text, padding=True, return_tensors="pt")
        encoded.pop("overflow_to_sample_mapping", None)
        with torch.no_grad():
            states = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        out.append(((states * mask).sum(1) / mask.sum(1)).numpy())
    return out


def one_vs_rest(x_train, y_train: np.ndarray, x_score, c: float) -> np.ndarray:
    """Each label's probability on x_score; a label constant on the train rows gets that constant."""
    proba = np.zeros((x_score.shape[0], y_train.shape[1]))
    for j in range(y_train.shape[1]):
        if y_train[:, j].min() == y_train[:, j].max():
            proba[:, j] = y_train[0, j]
        else:
            proba[:, j] = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train[:, j]).predict_proba(x_score)[:, 1]
    return proba


def out_of_fold(name: str, texts: list[str], y: np.ndarray, embedded: dict, seed: int) -> np.ndarray:
    proba = np.zeros(y.shape)
    for train, held in KFold(FOLDS, shuffle=True, random_state=seed).split(texts):
        if name == "tfidf":
            vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
            x_train = vectorizer.fit_transform([texts[i] for i in train])
            proba[held] = one_vs_rest(x_train, y[train], vectorizer.transform([texts[i] for i in held]), 10.0)
        elif name == "max_windows256":
            windows = embedded["windows256"]
            x_train = np.concatenate([windows[i] for i in train])
            y_train = np.concatenate([np.repeat(y[i : i + 1], len(windows[i]), axis=0) for i in train])
            window_proba = one_vs_rest(x_train, y_train, np.concatenate([windows[i] for i in held]), 1.0)
            start = 0
            for i in held:
                proba[i] = window_proba[start : start + len(windows[i])].max(axis=0)
                start += len(windows[i])
        else:
            proba[held] = one_vs_rest(embedded[name][train], y[train], embedded[name][held], 1.0)
    return proba


def main() -> int:
    path = resolve_model("minilm")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    per_seed = []
    for seed in SEEDS:
        config = MultiLabelConfig(data="factbook-resources", label_col="labels", seed=seed, eval_fraction=0.15, test_fraction=0.2, out="unused")
        splits, _ = load_multilabel_splits(config)
        rows = pd.concat([splits["train"], splits["eval"]]).reset_index(drop=True)  # the test split is not read
        labels = label_vocabulary([rows])
        y, texts = multi_hot(rows["labels"], labels), rows["text"].astype(str).tolist()
        windows256 = window_embeddings(model, tokenizer, texts, 256, 64, whole_text=True)
        embedded = {
            "windows256": windows256,
            "first256": np.stack([w[0] for w in windows256]),
            "mean_windows256": np.stack([w.mean(axis=0) for w in windows256]),
            "first512": np.stack([w[0] for w in window_embeddings(model, tokenizer, texts, 512, 0, whole_text=False)]),
        }
        figures = {}
        for name in FEATURES:
            proba = out_of_fold(name, texts, y, embedded, seed)
            figures[name] = max(f1_score(y, (proba >= t).astype(int), average="micro", zero_division=0) for t in THRESHOLDS)
        per_seed.append({"seed": seed, "rows": len(rows), "labels": len(labels), "micro_f1": figures})
        print(f"seed {seed}: " + json.dumps(figures), file=sys.stderr, flush=True)
    document = {
        "benchmark": "multilabel_probe_cv",
        "scored_on": "out-of-fold predictions over each seed's train + eval rows; the test split is not read",
        "chosen_on": {"the global threshold": "the same out-of-fold rows it scores (optimistic alike for every feature set)"},
        "per_seed": per_seed,
        "micro_f1": {
            name: {"mean": statistics.fmean(s["micro_f1"][name] for s in per_seed), "std": statistics.stdev(s["micro_f1"][name] for s in per_seed)}
            for name in FEATURES
        },
        "environment": hardware.environment("fp32"),
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
