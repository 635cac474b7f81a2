"""Settings of `tunelab strategies`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.config import Settings


class StrategiesConfig(Settings):
    """Five hallucination-reduction strategies on the same held-out questions."""

    qa: str = Field(..., description="folder with train.jsonl and test.jsonl (tunelab data factbook-qa --out DIR)")
    kb: str = Field("factbook", description="knowledge base: a folder of documents, 'factbook', or an existing index folder")
    model: str = Field("smollm2", description="causal LM: catalogue name or local folder")
    embed_model: str = Field("minilm", description="sentence-transformers model for the index and answer relevance")
    out: str = Field("strategies-report", description="output folder")

    test_questions: int = Field(200, gt=0, description="held-out questions every strategy answers (seeded sample of test.jsonl)")
    select_questions: int = Field(40, gt=0, description="train questions the best template is chosen on")
    train_pairs: int = Field(300, gt=0, description="train question/answer pairs for the closed-book SFT")
    rag_train_pairs: int = Field(160, gt=0, description="train pairs (with retrieved context) for the SFT + RAG strategy")
    templates: list[str] = Field(default_factory=lambda: ["plain", "concise", "abstain", "few-shot"], description="closed-book templates to choose from")
    select_by: Literal["penalised_score", "f1", "contains", "exact_match"] = Field(
        "penalised_score", description="train-split criterion for the best template; penalised_score = (right - wrong) / n rewards abstaining over guessing"
    )
    k: int = Field(3, gt=0, description="passages retrieved per question")
    context_chars: int = Field(500, gt=50, description="characters kept of each passage in the prompt")
    max_new_tokens: int = Field(24, gt=0)
    batch_size: int = Field(8, gt=0)
    epochs: float = Field(1.0, gt=0)
    sft_lr: float = Field(3e-4, gt=0)
    sft_batch_size: int = Field(8, gt=0)
    changes: int = Field(6, ge=0, description="facts edited in the knowledge-base copy (plus one new country)")
    strategies: list[Literal["closed-book", "best-prompt", "rag", "fine-tuned", "fine-tuned+rag"]] = Field(
        default_factory=lambda: ["closed-book", "best-prompt", "rag", "fine-tuned", "fine-tuned+rag"], min_length=1,
        description="which strategies to run (all by default)")
    adaptability: bool = Field(True, description="also run the new-knowledge test")
    bootstrap: int = Field(1000, gt=0)
    seed: int = 0
    quick: bool = Field(False, description="a few questions and short training: for tests and a first look")
    overwrite: bool = False

    def quick_sized(self) -> StrategiesConfig:
        if not self.quick:
            return self
        return self.model_copy(update=dict(
            test_questions=min(self.test_questions, 6), select_questions=min(self.select_questions, 4),
            train_pairs=min(self.train_pairs, 16), rag_train_pairs=min(self.rag_train_pairs, 16),
            max_new_tokens=min(self.max_new_tokens, 8), k=1, context_chars=min(self.context_chars, 120), changes=min(self.changes, 2), bootstrap=min(self.bootstrap, 200),
        ))
