"""Settings of `tunelab strategies`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.config import Settings
from tunelab.data.factbook_qa import CALIBRATION_FIELD_QUESTIONS, CALIBRATION_FIELDS, READER_FIELD_QUESTIONS
from tunelab.rag.reader_data import SCOPES
from tunelab.rag.train_reader import DEFAULT_DISTRACTORS, DISTRACTORS, MISS_ABSTENTION, MISS_KIND, MISS_KINDS, NAMED_DOCUMENT


class StrategiesConfig(Settings):
    """Six hallucination-reduction strategies on the same held-out questions."""

    qa: str | None = Field(
        None,
        description="folder with train.jsonl and test.jsonl (tunelab data factbook-qa --out DIR); "
        "none: the built-in Factbook QA set (with the 'factbook' knowledge base only)",
    )
    kb: str = Field("factbook", description="knowledge base: a folder of documents, 'factbook', or an existing index folder")
    model: str = Field("smollm2", description="causal LM: catalogue name or local folder")
    embed_model: str = Field("minilm", description="sentence-transformers model for the index and answer relevance")
    reader_model: str = Field("minilm", description="encoder fine-tuned as the extractive reader")
    out: str = Field("strategies-report", description="output folder")

    test_questions: int = Field(200, gt=0, description="held-out questions every strategy answers (seeded sample of test.jsonl)")
    test_block: int = Field(
        0,
        ge=0,
        description="which disjoint block of test_questions in the seeded shuffle of test.jsonl is scored: "
        "after a change was judged on block 0, block 1 is a fresh sample the change was not chosen on",
    )
    select_questions: int = Field(40, gt=0, description="train questions the best template is chosen on")
    calibration_questions: int = Field(200, gt=0, description="train questions the retrieval strategies' abstention thresholds are chosen on")
    train_pairs: int = Field(300, gt=0, description="train question/answer pairs for the closed-book SFT")
    rag_train_pairs: int = Field(1000, gt=0, description="train questions (with retrieved context, some with distractors only) for the generative reader")
    reader_epochs: float = Field(2.0, gt=0, description="epochs of the extractive reader")
    reader_questions: int | None = Field(None, gt=0, description="train questions the readers learn from (default: all not used to select or calibrate)")
    field_questions: int = Field(
        READER_FIELD_QUESTIONS,
        ge=0,
        description="extra training questions of the extractive readers about the Factbook lines no question kind reads "
        "(fields.jsonl of the QA folder, spread over the fields): many kinds of question, so a reader generalises to kinds it never saw; 0 for none",
    )
    calibration_fields: int = Field(
        CALIBRATION_FIELDS,
        ge=0,
        description="fields of fields.jsonl kept out of the extractive readers' training; questions about them join the calibration questions "
        "of the readers' thresholds, so the thresholds also fit kinds of question a reader never met; 0 for none",
    )
    calibration_field_questions: int = Field(CALIBRATION_FIELD_QUESTIONS, ge=0, description="questions about the calibration fields (spread over them)")
    miss_abstention: float | None = Field(
        MISS_ABSTENTION,
        gt=0,
        le=1,
        description="the extractive readers' thresholds abstain on at least this share of the calibration questions asked as if retrieval had "
        "missed (miss_kind); none: no such constraint",
    )
    miss_kind: Literal[MISS_KINDS] = Field(
        MISS_KIND,
        description="the misses miss_abstention asks about: 'line', the question's own retrieval with every line that holds the answer left "
        "out (what most real misses are: the right document, not the line), or 'retrieval', its document missed (the best chunks of the "
        "other documents)",
    )
    named_document: bool = Field(
        NAMED_DOCUMENT,
        description="the retrieval strategies' thresholds may also require an answer read from a document the question names, when it names "
        "any (chosen on the calibration questions like the other thresholds)",
    )
    reader_distractors: Literal[DISTRACTORS] = Field(
        DEFAULT_DISTRACTORS,
        description="what the extractive readers' distractor examples (a quarter of their training questions, taught to answer nothing) show: "
        "another question's passages, or the same question's best chunks of the other documents (what a retrieval miss shows), or half of each, "
        "or the same question's retrieval without the lines that hold the answer (line-miss)",
    )
    reader_run: str | None = Field(
        None,
        description="the extractive reader's run folder from an earlier run with the same questions and settings (its runs/extractive-reader): "
        "used instead of training one; its thresholds are still chosen here on the calibration questions",
    )
    templates: list[str] = Field(default_factory=lambda: ["plain", "concise", "abstain", "few-shot"], description="closed-book templates to choose from")
    select_by: Literal["penalised_score", "f1", "contains", "exact_match"] = Field(
        "penalised_score", description="train-split criterion for the best template; penalised_score = (right - wrong) / n rewards abstaining over guessing"
    )
    k: int = Field(6, gt=0, description="chunks retrieved per question")
    context: Literal["focused", "chunks"] = Field("focused", description="reader context: the lines closest to the question, or whole chunks")
    lines: int = Field(5, gt=0, description="lines of focused context")
    scope: Literal[SCOPES] = Field(
        "all", description="documents retrieval ranks: all, or only those a question names by title when it names any (every strategy's retrieval)"
    )
    chunks_k: int = Field(3, gt=0, description="chunks shown when the context is whole chunks (they are long)")
    shots: int = Field(
        3,
        ge=0,
        description="worked examples shown to the untrained LM reader (plain RAG): the nearest train questions, answered from their own passages; 0 for none",
    )
    example_pool: int = Field(600, gt=0, description="train questions (from the reader-training share) the worked examples are drawn from")
    plain_rag_abstention: Literal["budget", "net"] = Field(
        "budget",
        description="plain RAG's thresholds: the most right within a hallucination budget (budget), or the most right - hallucinated "
        "(net, as the trained readers); the untrained reader is wrong about as often as right, so net abstains on most questions",
    )
    hallucination_budget: float | None = Field(
        None, gt=0, lt=1, description="plain RAG's hallucinated share allowed on the calibration questions; none: a third of closed-book's rate on them"
    )
    decoding: Literal["choose", "grounded", "free"] = Field(
        "choose",
        description="LM readers: answers copied from the passages (grounded), free text, or choose: whichever scores better on the calibration train questions",
    )
    ablation: bool = Field(True, description="also run the retrieval strategies with the other decoding and context")
    held_out_kinds: list[str] = Field(
        default_factory=lambda: ["capital", "currency", "highest_point"],
        description="leave-kinds-out test: a reader trained without these question kinds, tested on them ([] to skip)",
    )
    max_new_tokens: int = Field(24, gt=0)
    batch_size: int = Field(8, gt=0)
    epochs: float = Field(1.0, gt=0)
    sft_lr: float = Field(3e-4, gt=0)
    sft_batch_size: int = Field(8, gt=0)
    changes: int = Field(6, ge=0, description="facts edited in the knowledge-base copy (plus one new country)")
    strategies: list[Literal["closed-book", "best-prompt", "rag", "fine-tuned", "fine-tuned+rag", "extractive+rag"]] = Field(
        default_factory=lambda: ["closed-book", "best-prompt", "rag", "fine-tuned", "fine-tuned+rag", "extractive+rag"],
        min_length=1,
        description="which strategies to run (all by default)",
    )
    adaptability: bool = Field(True, description="also run the new-knowledge test")
    bootstrap: int = Field(1000, gt=0)
    seed: int = 0
    quick: bool = Field(False, description="a few questions and short training: for tests and a first look")
    overwrite: bool = False

    def quick_sized(self) -> StrategiesConfig:
        if not self.quick:
            return self
        return self.model_copy(
            update=dict(
                test_questions=min(self.test_questions, 6),
                select_questions=min(self.select_questions, 4),
                calibration_questions=min(self.calibration_questions, 6),
                train_pairs=min(self.train_pairs, 16),
                rag_train_pairs=min(self.rag_train_pairs, 16),
                reader_epochs=min(self.reader_epochs, 1.0),
                reader_questions=min(self.reader_questions or 64, 64),
                field_questions=min(self.field_questions, 16),
                calibration_field_questions=min(self.calibration_field_questions, 4),
                max_new_tokens=min(self.max_new_tokens, 8),
                example_pool=min(self.example_pool, 16),
                k=min(self.k, 2),
                lines=1,
                chunks_k=1,
                changes=min(self.changes, 2),
                bootstrap=min(self.bootstrap, 200),
                ablation=False,
                held_out_kinds=[],
            )
        )
