"""A tiny but real run directory for the evaluation tests: a random 2-layer BERT, a WordPiece vocab,
a test split, a training history and a data profile — everything `tunelab train` would leave."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import yaml

TOPICS = [["market", "price", "shares"], ["game", "match", "team"], ["phone", "chip", "software"], ["film", "song", "actor"]]
FILLER = "the a good bad great awful food service john mary was is very not really and but loved hated".split()
WORDS = [w for topic in TOPICS for w in topic] + FILLER + ["he", "she", "his", "her", "him"]


def make_run(root: Path, labels: list[str], n_test: int = 60, seed: int = 0, test_labels: list[str] | None = None, train: bool = True) -> Path:
    """Write a run directory under root and return its path. test_labels: the only labels in the test split;
    train=False keeps the random model (fast, but it gives every text the same class)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    run = root / "run"
    model_dir = run / "model"
    model_dir.mkdir(parents=True)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab), do_lower_case=True)  # transformers 5: vocab=, not vocab_file=
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(labels),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model = BertForSequenceClassification(config)
    rng = random.Random(seed)
    train_texts, train_labels = make_texts(rng, labels, 160)
    if train:
        fit(model, tokenizer, train_texts, train_labels)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    texts, ids = make_texts(rng, labels, n_test * 3)
    frame = pd.DataFrame({"text": texts, "label": [labels[i] for i in ids]})
    frame = frame[frame["label"].isin(test_labels or labels)].head(n_test).reset_index(drop=True)
    (run / "splits").mkdir()
    frame.to_parquet(run / "splits" / "test.parquet", index=False)
    (run / "labels.json").write_text(json.dumps({str(i): name for i, name in enumerate(labels)}), encoding="utf-8")
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model": "tiny-bert",
                "data": "synthetic",
                "text_col": "text",
                "label_col": "label",
                "epochs": 3,
                "lr": 5e-5,
                "batch_size": 8,
                "grad_accum": 1,
                "max_length": 32,
                "precision": "fp32",
                "seed": seed,
            }
        ),
        encoding="utf-8",
    )
    history = []
    step = 0
    for epoch in (1, 2, 3):
        for _ in range(4):
            step += 5
            loss = 1.2 / (step / 10 + 1)
            history.append(
                {
                    "type": "train",
                    "step": step,
                    "epoch": epoch - 1 + step % 20 / 20,
                    "loss": loss,
                    "learning_rate": 5e-5,
                    "grad_norm": 1.0,
                    "train_accuracy": min(1.0, 0.4 + step / 80),
                }
            )
        # eval loss that bottoms out and rises again: the over-fitting the report must flag
        history.append(
            {
                "type": "eval",
                "step": step,
                "epoch": float(epoch),
                "eval_loss": [0.9, 0.7, 0.95][epoch - 1],
                "eval_accuracy": [0.55, 0.62, 0.6][epoch - 1],
                "eval_f1_macro": 0.5,
                "train_accuracy": min(1.0, 0.4 + step / 80),
            }
        )
    history.append({"type": "summary", "train_runtime": 12.5, "train_samples_per_second": 40.0, "train_loss": 0.4})
    (run / "history.jsonl").write_text("\n".join(json.dumps(h) for h in history) + "\n", encoding="utf-8")
    (run / "data_profile.json").write_text(
        json.dumps(
            {
                "splits": {
                    "train": {
                        "rows": 200,
                        "class_counts": {name: 200 // len(labels) for name in labels},
                        "duplicate_texts": 0,
                        "token_length": {"p50": 8.0, "p95": 13.0, "max": 16},
                    },
                    "test": {"rows": n_test, "class_counts": frame["label"].value_counts().to_dict(), "duplicate_texts": 0, "overlap_with_train": 2},
                },
                "dropped": {},
                "warnings": ["test: 2 texts also appear in train — scores on test will be optimistic"],
            }
        ),
        encoding="utf-8",
    )
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "train": {
                    "train_runtime_s": 12.5,
                    "train_samples_per_second": 40.0,
                    "train_loss": 0.4,
                    "peak_memory_mb": 512.0,
                    "epochs": 3,
                    "best_checkpoint": "checkpoint-40",
                },
                "environment": {"cpu": "test cpu", "cores": 2, "torch": torch.__version__, "transformers": "5", "precision": "fp32"},
            }
        ),
        encoding="utf-8",
    )
    return run


_BUILT: dict[tuple, Path] = {}


def run_copy(factory, dest: Path, labels: list[str], **options) -> Path:
    """A private copy of a run built once per test session (training even a tiny model takes seconds)."""
    key = (tuple(labels), tuple(sorted(options.items())))
    if key not in _BUILT:
        _BUILT[key] = make_run(factory.mktemp("evaluate-run"), labels, **options)
    return Path(shutil.copytree(_BUILT[key], dest / "run"))


def make_texts(rng: random.Random, labels: list[str], n: int) -> tuple[list[str], list[int]]:
    """Texts whose label shows in a topic word; a third have none, and there the pronoun decides —
    a planted stereotype (she -> label 1, he -> label 0) for the bias probe to find."""
    texts, ids = [], []
    for i in range(n):
        label = i % len(labels)
        pronoun = rng.choice(["he", "she"])
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))] + [pronoun]
        if rng.random() < 0.65 or label > 1:
            words.append(rng.choice(TOPICS[label % len(TOPICS)]))
        else:
            label = 1 if pronoun == "she" else 0
        rng.shuffle(words)
        texts.append(" ".join(words))
        ids.append(label)
    return texts, ids


def fit(model, tokenizer, texts: list[str], ids: list[int], steps: int = 40, batch: int = 32) -> None:
    """A few optimiser steps: ~85% right on the test split, so the report has both hits and mistakes
    (a random BERT gives one class to everything), and the planted he/she rule is partly learned."""
    import torch

    batches = [(tokenizer(texts[s : s + batch], padding=True, return_tensors="pt"), torch.tensor(ids[s : s + batch])) for s in range(0, len(texts), batch)]
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(steps):
        inputs, labels = batches[step % len(batches)]
        model(**inputs, labels=labels).loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
