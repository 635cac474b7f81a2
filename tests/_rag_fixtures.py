"""Tiny models and a small document folder for the RAG tests, built inside the test session."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np

WORDS = (
    "the a of and to in is are what do does how eat eats diet food fish mice milk "
    "cat cats kitten kittens feline dog dogs puppy canine car cars automobile vehicle engine motor "
    "repair manual fixing wheels brakes petrol river rivers nile long water sea "
    "census bureau statistics report tables office apples pears fruit red green sweet "
    "stock market prices shares bank money capital city paris france berlin germany"
).split()

# Synonyms share one "meaning" dimension: the fake embedder's whole notion of semantics.
CONCEPTS = {
    "feline": ["cat", "cats", "kitten", "kittens", "feline"],
    "canine": ["dog", "dogs", "puppy", "canine"],
    "food": ["eat", "eats", "diet", "food", "fish", "mice", "milk"],
    "vehicle": ["car", "cars", "automobile", "vehicle", "engine", "motor", "wheels", "brakes", "petrol"],
    "water": ["river", "rivers", "nile", "water", "sea"],
    "fruit": ["apples", "pears", "fruit"],
    "money": ["stock", "market", "prices", "shares", "bank", "money"],
}
STOP = {"the", "a", "of", "and", "to", "in", "is", "are", "what", "do", "does", "how"}


def tiny_tokenizer(folder: Path | None = None):
    from transformers import BertTokenizerFast

    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *dict.fromkeys(WORDS),
        *"abcdefghijklmnopqrstuvwxyz0123456789",
        *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"),
        ".",
        ",",
        ";",
        ":",
        "-",
        "'",
        "(",
        ")",
        "#",
        "&",
        "—",
    ]
    vocab = list(dict.fromkeys(vocab))  # "a" is both a word and a letter: ids must stay contiguous
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, model_max_length=256)
    if folder is not None:
        tokenizer.save_pretrained(folder)
    return tokenizer


class ConceptEmbedder:
    """A deterministic embedder: concept dimensions for known synonyms, hashed dimensions otherwise.

    Honest stand-in for a semantic model in ranking tests: "feline diet" lands next to
    "cats eat fish" without sharing a word, which BM25 cannot see.
    """

    name = "concept-fake"
    max_tokens = 256

    def __init__(self):
        self.tokenizer = tiny_tokenizer()
        self.concepts = {w: i for i, words in enumerate(CONCEPTS.values()) for w in words}
        self.dim = len(CONCEPTS) + 16
        self.calls: list[list[str]] = []

    def encode(self, texts, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                if word in STOP:
                    continue
                if word in self.concepts:
                    out[row, self.concepts[word]] += 1.0
                else:
                    out[row, len(CONCEPTS) + zlib.crc32(word.encode()) % 16] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, -1] = 1.0
        return out


def write_tiny_sentence_model(folder: Path) -> Path:
    """A random 2-layer BERT (hidden 32) wrapped as a sentence-transformers model: Transformer + mean Pooling."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    bert_dir = folder / "bert"
    bert_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(bert_dir)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=256
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(bert_dir)
    transformer = Transformer(str(bert_dir), max_seq_length=256)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    out = folder / "st"
    model.save(str(out))
    return out


def write_docs(folder: Path) -> Path:
    """Four small documents in the four supported formats."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cats.md").write_text("# Cats\n\n## Food\n\nCats eat fish and mice; kittens eat milk.\n\n## Sleep\n\nCats sleep most of the day.\n")
    (folder / "census.html").write_text(
        "<html><head><title>Census &amp; Statistics</title></head><body>"
        "<h1>Census bureau report</h1><p>Tables of the feline diet census: office statistics, report tables.</p>"
        "<h2>Office</h2><p>The bureau office publishes statistics &amp; tables.</p></body></html>"
    )
    (folder / "cars.json").write_text(
        '{"title": "Automobile", "Repair": {"Engine": {"text": "An automobile engine burns petrol; fixing the <b>motor</b>."},'
        ' "Brakes": {"text": "Brakes stop the wheels."}}}'
    )
    (folder / "rivers.txt").write_text("The Nile is a long river.\n\nRivers carry water to the sea.\n")
    return folder
