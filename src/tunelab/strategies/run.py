"""`tunelab strategies`: closed-book, best prompt, RAG, fine-tuned, fine-tuned + RAG, extractive reader + RAG.

    from tunelab.strategies import StrategiesConfig, run_strategies
    results = run_strategies(StrategiesConfig(qa="qa", kb="factbook", model="smollm2"))

Every strategy answers the same seeded sample of test questions with the same model, greedy
decoding and token budget; only what the strategy changes (prompt, retrieved context, weights,
reader) differs. The retrieval strategies share one context per question (retrieved and focused
once) and abstain below thresholds chosen on train questions (`calibration_questions`); the test
questions only score. results.json is rewritten after every stage, so an interrupted run still
leaves every measured number behind (marked incomplete).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from tunelab import atomic
from tunelab.answers import ABSTENTION, answer_in_text, score, summarise, verdict
from tunelab.data.factbook_qa import FieldQuestionRoles, field_question_roles
from tunelab.errors import TunelabError
from tunelab.hardware import disk_mb
from tunelab.progress import progress_bar
from tunelab.prompts.evaluate import latency_summary, run_template
from tunelab.prompts.loader import load_template
from tunelab.rag.evaluate import retrieval_misses
from tunelab.rag.reader_data import ContextSettings
from tunelab.strategies.adapt import edit_knowledge, says_old_answer
from tunelab.strategies.config import StrategiesConfig
from tunelab.strategies.memory import PeakMemory

STRATEGIES = ("closed-book", "best-prompt", "rag", "fine-tuned", "fine-tuned+rag", "extractive+rag")
RETRIEVAL_STRATEGIES = ("rag", "fine-tuned+rag", "extractive+rag")


def read_split(qa_dir: Path, name: str) -> list[dict]:
    from tunelab.data.factbook_qa import read_qa

    path = qa_dir / f"{name}.jsonl"
    if not path.is_file():
        raise TunelabError(f"'{qa_dir}' has no {name}.jsonl", "build the QA folder with: tunelab data factbook-qa --out DIR")
    rows = [r for r in read_qa(path) if r.get("answer")]
    if not rows:
        raise TunelabError(f"{path} has no rows with an answer", "each row needs question and answer")
    return rows


def sample(rows: list[dict], n: int, seed: int, block: int = 0) -> list[dict]:
    """The `block`-th run of n rows of a seeded shuffle: blocks of one seed are disjoint."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[block * n : (block + 1) * n]


class Pipeline:
    def __init__(self, config: StrategiesConfig, progress: bool = True):
        self.config = config.quick_sized()
        self.progress = progress
        self.out = Path(self.config.out).expanduser()
        self.results: dict[str, Any] = {"config": self.config.model_dump(), "complete": False, "strategies": {}, "stages_seconds": {}}
        self._index = None
        self._contexts: dict[tuple[int, str], dict[str, object]] = {}  # (index, context kind) -> question -> Retrieved
        self.readers: dict[str, tuple[object, object]] = {}  # retrieval strategy -> (reader, Abstention)
        self._readings: dict[tuple, Any] = {}  # _reading_key -> readings; for "missed", read_misses' (contexts, readings)
        self._examples: dict[str, object] = {}  # context kind -> WorkedExamples
        self._misses: dict[str, tuple | None] = {}  # question -> (row, context as if retrieval missed), None when that is no miss

    # bookkeeping ------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.progress:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")

    def save(self) -> None:
        atomic.write_json(self.out / "results.json", self.results)

    def save_predictions(self, name: str, predictions: list[dict]) -> None:
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
        atomic.write_text(self.out / "predictions" / f"{name}.jsonl", lines)

    # retrieval --------------------------------------------------------------------------------
    def context_settings(self, context: str | None = None) -> ContextSettings:
        c = self.config
        context = context or c.context
        return ContextSettings(mode="hybrid", k=c.k if context == "focused" else c.chunks_k, context=context, lines=c.lines, scope=c.scope)

    def contexts(self, rows: list[dict], context: str | None = None, index=None) -> list:
        """Each row's retrieved (and focused) context, computed once per question and context kind."""
        from tunelab.rag.reader_data import retrieve_context

        settings = self.context_settings(context)
        index = index or self._index
        cache = self._contexts.setdefault((id(index), settings.context), {})
        missing = [r for r in rows if r["question"] not in cache]
        if missing:
            with progress_bar(self.progress) as bar:
                task = bar.add_task(f"retrieving ({settings.context})", total=len(missing)) if bar else None
                for row in missing:
                    cache[row["question"]] = retrieve_context(index, row["question"], settings)
                    if bar:
                        bar.advance(task, 1)
        return [cache[r["question"]] for r in rows]

    # stages -----------------------------------------------------------------------------------
    def run(self) -> dict:
        c = self.config
        train_rows, test_rows, qa_source = self.questions()
        self.test = sample(test_rows, c.test_questions, c.seed, c.test_block)
        if not self.test:
            raise TunelabError(
                f"test.jsonl holds {len(test_rows)} questions: none are left for test_block {c.test_block} of {c.test_questions}",
                "choose a lower test_block or fewer test_questions",
            )
        if self.out.exists() and any(self.out.iterdir()) and not c.overwrite:
            raise TunelabError(f"'{self.out}' is not empty", "choose another --out, or pass --overwrite")
        if self.out.exists() and c.overwrite:
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        # Train questions, disjoint roles: template choice | abstention thresholds | training.
        shuffled = sample(train_rows, len(train_rows), c.seed + 1)
        self.select = shuffled[: c.select_questions]
        self.calibration = shuffled[c.select_questions : c.select_questions + c.calibration_questions]
        self.training = shuffled[c.select_questions + c.calibration_questions :][: c.reader_questions]
        # The extractive readers also learn from questions about other fields (never a test question's field),
        # and choose their thresholds also on questions about fields kept out of their training.
        fields = self.field_questions()
        self.reader_training = self.training + fields.training
        self.reader_calibration = self.calibration + fields.calibration
        self.sft_rows = self.training[: c.train_pairs]
        self.rag_sft_rows = self.training[: c.rag_train_pairs]
        self.results.update(
            questions={
                "test": len(self.test),
                "select": len(self.select),
                "calibration": len(self.calibration),
                "sft": len(self.sft_rows),
                "rag_sft": len(self.rag_sft_rows),
                "reader_training": len(self.training),
                "qa": qa_source,
                "field_questions": len(fields.training),
                "calibration_field_questions": len(fields.calibration),
                "calibration_fields": fields.calibration_fields,
                "chosen_on": "template: select (train); abstention thresholds: calibration (train; the extractive readers' also on calibration "
                "field questions, about fields they never trained on); weights: sft / reader_training (train); test only scores",
            }
        )
        if c.test_block:
            self.results["questions"]["test_block"] = c.test_block
        if len(self.test) < c.test_questions:
            self.results["questions"]["note"] = f"test.jsonl holds only {len(self.test)} questions for this block"

        from tunelab.lm.generate import Generator
        from tunelab.rag.embed import SentenceEmbedder

        self.embedder = SentenceEmbedder(c.embed_model)
        with PeakMemory() as peak:
            started = time.perf_counter()
            self.base = Generator(c.model)
            load_seconds = time.perf_counter() - started
        self.results["model"] = {"name": c.model, "load_seconds": load_seconds, "disk_mb": disk_mb(_model_folder(c.model)), "rss_mb_loaded": peak.mb}
        self.results["environment"] = _environment()

        wanted = set(c.strategies)
        stages = [
            stage
            for name, stage in (
                ("closed-book", self.stage_closed_book),
                ("rag", self.stage_rag),
                ("best-prompt", self.stage_best_prompt),
                ("fine-tuned", self.stage_fine_tuned),
                ("extractive+rag", self.stage_extractive_rag),
                ("fine-tuned+rag", self.stage_fine_tuned_rag),
            )
            if name in wanted
        ]
        if wanted & set(RETRIEVAL_STRATEGIES) or c.adaptability:
            stages.insert(0, self.stage_index)
        if c.ablation and wanted & set(RETRIEVAL_STRATEGIES):
            stages.append(self.stage_ablation)
        if c.held_out_kinds and "extractive+rag" in wanted:
            stages.append(self.stage_leave_kinds_out)
        if c.adaptability:
            stages.append(self.stage_adaptability)
        for stage in stages:
            started = time.perf_counter()
            stage()
            self.results["stages_seconds"][stage.__name__.removeprefix("stage_")] = time.perf_counter() - started
            self.save()
        self.results["complete"] = True
        self.finish()
        return self.results

    def questions(self) -> tuple[list[dict], list[dict], str]:
        """(train rows, test rows, where they came from): the --qa folder, or the built-in Factbook QA set."""
        from tunelab.rag.builtin import builtin_qa, is_builtin_name

        c = self.config
        if c.qa is not None:
            qa_dir = Path(c.qa).expanduser()
            return read_split(qa_dir, "train"), read_split(qa_dir, "test"), str(qa_dir)
        if not is_builtin_name(c.kb):
            raise TunelabError(
                f"the knowledge base '{c.kb}' needs its own questions", "pass --qa DIR with train.jsonl and test.jsonl about it (or leave --kb at factbook)"
            )
        train, test = builtin_qa()
        return [r for r in train if r.get("answer")], [r for r in test if r.get("answer")], "built-in Factbook QA (tunelab data factbook-qa)"

    def field_questions(self) -> FieldQuestionRoles:
        """The extractive readers' extra training and calibration questions: fields.jsonl of the --qa folder
        (or, for the built-in set, the same questions built here), in their two roles; none for other QA sets."""
        from tunelab.rag.builtin import builtin_field_questions

        c = self.config
        sizes = (c.field_questions, c.calibration_fields, c.calibration_field_questions)
        if c.qa is None:
            return builtin_field_questions(*sizes, seed=c.seed)
        path = Path(c.qa).expanduser() / "fields.jsonl"
        return field_question_roles(read_split(path.parent, "fields") if path.is_file() else [], *sizes, seed=c.seed)

    def finish(self) -> None:
        from tunelab.strategies.report import write_report

        self.save()
        write_report(self.out, self.results)

    def stage_index(self) -> None:
        from tunelab.rag.builtin import builtin_index, index_is_built, is_builtin_name
        from tunelab.rag.documents import load_documents
        from tunelab.rag.index import build_index, open_index, read_manifest

        c = self.config
        kb = Path(c.kb).expanduser()
        index_dir = self.out / "index"
        seconds, peak_mb, report = None, None, None  # the build's cost, when this run builds the index
        if is_builtin_name(c.kb):
            # The one built-in index in tunelab's cache (rag ask and prompts eval use it too): built
            # once, timed when it is built here, then copied like any prebuilt index.
            cached = index_is_built(c.embed_model)
            started = time.perf_counter()
            with PeakMemory() as peak:
                kb = builtin_index(self.progress, c.embed_model)
            if not cached:
                seconds, peak_mb = time.perf_counter() - started, peak.mb
        if kb.is_dir() and read_manifest(kb) is not None:
            # An existing index: its build time is not ours to measure; reuse a copy (adaptability edits the copy).
            self.log(f"copying the index {kb}")
            shutil.copytree(kb, index_dir)
            source = read_manifest(kb).get("source", "")
            self.documents = load_documents(source) if source and source != "documents" else None
        else:
            self.log(f"indexing {c.kb}")
            self.documents = load_documents(c.kb)
            with PeakMemory() as peak:
                report = build_index(self.documents, index_dir, model=c.embed_model, embedder=self.embedder, progress=self.progress)
            seconds, peak_mb = report.seconds, peak.mb
        self._index = open_index(index_dir, embedder=self.embedder)
        self.results["index"] = {
            "build_seconds": seconds,
            "prebuilt": seconds is None,
            "source": str(kb),
            "chunks": report.chunks_total if report else None,
            "documents": len(self.documents) if self.documents else None,
            "disk_mb": disk_mb(index_dir),
            "peak_memory_mb": peak_mb,
        }

    def record(self, name: str, outcome: dict, *, setup_seconds: float, setup: dict, peak_mb: float, disk_mb: float, extra: dict | None = None) -> None:
        predictions = outcome["predictions"]
        relevance = self.relevance(predictions)
        summary = summarise(predictions, seed=self.config.seed)
        self.results["strategies"][name] = {
            "template": outcome.get("template"),
            **summary,
            "answer_relevance": relevance,
            "setup_seconds": setup_seconds,
            "setup": setup,
            "latency": outcome["latency"],
            "peak_memory_mb": peak_mb,
            "disk_mb": disk_mb,
            **(extra or {}),
        }
        self.save_predictions(name, predictions)
        self.log(
            f"{name}: contains {summary['contains']:.3f}  EM {summary['exact_match']:.3f}  F1 {summary['f1']:.3f}  hallucination {summary['hallucination_rate_all']:.3f}  abstain {summary['abstention_rate']:.3f}"
        )

    def relevance(self, predictions: list[dict]) -> float | None:
        """Mean cosine between question and answer embeddings, over answered questions (the guide's
        'context irrelevance': an answer about something else scores low)."""
        pairs = [(p["question"], p["prediction"]) for p in predictions if not p["abstained"] and p["prediction"].strip()]
        if not pairs:
            return None
        q = self.embedder.encode([a for a, _ in pairs])
        a = self.embedder.encode([b for _, b in pairs])
        for p, value in zip([p for p in predictions if not p["abstained"] and p["prediction"].strip()], (q * a).sum(axis=1)):
            p["relevance"] = float(value)
        return float(np.mean((q * a).sum(axis=1)))

    def answer(self, generator, template_name: str, rows: list[dict]) -> dict:
        """A closed-book strategy: the template's prompt, no retrieval."""
        with progress_bar(self.progress) as bar:
            task = bar.add_task(template_name, total=len(rows)) if bar else None
            template = load_template(template_name)
            return run_template(
                template,
                rows,
                generator,
                max_new_tokens=self.config.max_new_tokens,
                batch_size=self.config.batch_size,
                progress=(lambda n: bar.advance(task, n)) if bar else None,
            )

    # retrieval strategies -----------------------------------------------------------------------
    def lm_reader(self, generator, decoding: str | None = None, examples=None):
        from tunelab.rag.readers import LMReader

        c = self.config
        decoding = decoding or ("grounded" if c.decoding == "choose" else c.decoding)
        return LMReader(generator, "grounded", decoding, max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, examples=examples)

    def simulated_misses(self, rows: list[dict]) -> list[tuple]:
        """The rows asked as if retrieval had missed (rag/train_reader.simulated_misses of the config's miss_kind), once per question."""
        from tunelab.rag.train_reader import simulated_misses

        missing = [r for r in rows if r["question"] not in self._misses]
        found = {
            row["question"]: (row, context) for row, context in simulated_misses(self._index, missing, self.context_settings(), kind=self.config.miss_kind)
        }
        for row in missing:
            self._misses[row["question"]] = found.get(row["question"])
        return [self._misses[r["question"]] for r in rows if self._misses[r["question"]] is not None]

    def worked_examples(self, context: str | None = None):
        """Worked examples for the untrained LM reader, from the first `example_pool` reader-training
        (train) questions, retrieved in the same context kind as the questions they are shown with."""
        from tunelab.rag.examples import WorkedExamples

        c = self.config
        if c.shots == 0:
            return None
        kind = self.context_settings(context).context
        if kind not in self._examples:
            rows = self.training[: c.example_pool]
            self._examples[kind] = WorkedExamples.from_rows(rows, self.contexts(rows, context), self.embedder, c.shots)
        return self._examples[kind]

    def read(self, reader, rows: list[dict], context: str | None = None, index=None) -> list:
        """Unthresholded readings of rows (the thresholds are applied by `decide`); each reader reads
        each question in each context once (the ablation reuses the strategies' readings)."""
        key = self._reading_key(reader, rows, self.context_settings(context).context, index)
        if key not in self._readings:
            self._readings[key] = self._read(reader, rows, context, index)
        return self._readings[key]

    def read_misses(self, reader, rows: list[dict]) -> tuple[list, list]:
        """(contexts, unthresholded readings) of the rows' simulated misses (rag/train_reader.read_misses), read once per reader."""
        from tunelab.rag.train_reader import read_misses

        key = self._reading_key(reader, rows, "missed")
        if key not in self._readings:
            self._readings[key] = read_misses(reader, self.simulated_misses(rows))
        return self._readings[key]

    def _reading_key(self, reader, rows: list[dict], shown: str, index=None) -> tuple:
        """Which readings: the reader's, of these questions, shown `shown` (a context kind, or "missed") from `index`."""
        return (reader.name, shown, id(index or self._index), tuple(r["question"] for r in rows))

    def _read(self, reader, rows: list[dict], context: str | None, index) -> list:
        contexts = self.contexts(rows, context, index)
        with progress_bar(self.progress) as bar:
            task = bar.add_task(f"{reader.name} ({self.context_settings(context).context})", total=len(rows)) if bar else None
            readings = []
            for start in range(0, len(rows), self.config.batch_size * 4):
                part = slice(start, start + self.config.batch_size * 4)
                readings += reader.read_many([r["question"] for r in rows[part]], [x.passages for x in contexts[part]], threshold=float("-inf"))
                if bar:
                    bar.advance(task, len(rows[part]))
        return readings

    def calibrate(
        self,
        reader,
        context: str | None = None,
        max_hallucinated: float | None = None,
        rows: list[dict] | None = None,
        min_miss_abstention: float | None = None,
    ):
        """Abstention thresholds (retrieval similarity, reader confidence) chosen on the calibration train
        questions (or `rows`): the most right - hallucinated, or the most right within a hallucination budget;
        with `min_miss_abstention`, abstaining on that share of them asked as if retrieval had missed (the config's miss_kind)."""
        from tunelab.rag.train_reader import choose_abstention

        rows = self.calibration if rows is None else rows
        readings = self.read(reader, rows, context)
        misses = self.read_misses(reader, rows) if min_miss_abstention else None
        return choose_abstention(
            rows,
            self.contexts(rows, context),
            readings,
            f"train (calibration questions, {len(rows)})",
            max_hallucinated=max_hallucinated,
            misses=misses,
            min_miss_abstention=min_miss_abstention,
            named_document=self.config.named_document,
            miss_kind=self.config.miss_kind,
        )

    def decide(self, rows: list[dict], readings: list, abstention, context: str | None = None, index=None) -> dict:
        """Predictions with the thresholds applied, scored; latency = retrieval + this question's reading share."""
        from tunelab.rag.train_reader import Abstention, below_threshold, reading_features

        contexts = self.contexts(rows, context, index)
        # No thresholds (None): every answer the reader gave stands.
        failed = below_threshold(abstention or Abstention(min_similarity=float("-inf")), reading_features(contexts, readings))
        predictions = []
        for row, reading, retrieved, below in zip(rows, readings, contexts, failed):
            by_retrieval = below == "similarity"
            by_reader = below is not None and not by_retrieval and not reading.abstained
            text = ABSTENTION if by_retrieval or by_reader else reading.text
            aliases = row.get("aliases") or []
            scores = score(text, row["answer"], aliases, row["question"])
            shown = "\n".join(p.reader_text() for p in retrieved.passages)
            predictions.append(
                {
                    "question": row["question"],
                    "answer": row["answer"],
                    "aliases": list(aliases),
                    "kind": row.get("kind"),
                    "prediction": text,
                    "unthresholded": reading.text,
                    "confidence": reading.confidence if reading.confidence == reading.confidence else None,
                    "best_similarity": retrieved.best_similarity,
                    "seconds": retrieved.seconds + reading.seconds,
                    "retrieval_seconds": retrieved.seconds,
                    "prompt_tokens": reading.prompt_tokens,
                    "retrieval_abstained": by_retrieval,
                    "threshold_abstained": by_reader,
                    "answer_in_context": answer_in_text(shown, row["answer"], aliases),
                    "verdict": verdict(scores),
                    **scores,
                }
            )
        return {"predictions": predictions, "latency": latency_summary([p["seconds"] for p in predictions])}

    def retrieval_extra(self, outcome: dict, abstention, reader_name: str) -> dict:
        predictions = outcome["predictions"]
        unthresholded = summarise([score(p["unthresholded"], p["answer"], p["aliases"], p["question"]) for p in predictions], ci=False)
        return {
            "reader": reader_name,
            "context": self.context_settings().to_dict(),
            "abstention": abstention.to_dict() if abstention is not None else None,
            "retrieval_abstentions": sum(1 for p in predictions if p["retrieval_abstained"]),
            "threshold_abstentions": sum(1 for p in predictions if p["threshold_abstained"]),
            "answer_in_context": float(np.mean([p["answer_in_context"] for p in predictions])) if predictions else None,
            "retrieval_misses": retrieval_misses(predictions),
            "without_thresholds": {k: unthresholded[k] for k in ("contains", "hallucination_rate_all", "abstention_rate")},
        }

    def choose_decoding(
        self, name: str, reader, max_hallucinated: float | None = None, calibration: list[dict] | None = None, min_miss_abstention: float | None = None
    ):
        """(reader, thresholds): an LM reader's decoding is, with `decoding: choose`, whichever of
        grounded and free scores better (the thresholds' criterion, thresholds applied) on the
        calibration train questions; the test questions take no part."""
        if self.config.decoding != "choose" or not hasattr(reader, "decoding"):
            return reader, self.calibrate(reader, max_hallucinated=max_hallucinated, rows=calibration, min_miss_abstention=min_miss_abstention)
        tried = {}
        for decoding in ("grounded", "free"):
            candidate = self.lm_reader(reader.generator, decoding, reader.examples)
            tried[decoding] = (candidate, self.calibrate(candidate, max_hallucinated=max_hallucinated))
        chosen = max(tried, key=lambda d: tried[d][1].value)
        self.results.setdefault("decoding_choice", {})[name] = {
            "chosen": chosen,
            "chosen_on": f"train (calibration questions), {len(self.calibration)} questions",
            "criterion": f"{tried[chosen][1].criterion}, per question, thresholds applied",
            "values": {d: a.value for d, (_, a) in tried.items()},
        }
        self.log(f"{name}: {chosen} decoding chosen on the calibration questions ({', '.join(f'{d} {a.value:.3f}' for d, (_, a) in tried.items())})")
        return tried[chosen]

    def run_retrieval_strategy(
        self,
        name: str,
        reader,
        *,
        setup_seconds: float,
        setup: dict,
        peak_mb: float,
        disk_mb: float,
        max_hallucinated: float | None = None,
        calibration: list[dict] | None = None,
        min_miss_abstention: float | None = None,
    ) -> None:
        """Thresholds chosen on `calibration` (default: the calibration train questions), then the test questions answered and recorded."""
        with PeakMemory() as peak:
            reader, abstention = self.choose_decoding(name, reader, max_hallucinated, calibration, min_miss_abstention)
            self.log(
                f"{name}: thresholds on {abstention.questions} train questions: similarity >= {abstention.min_similarity:.3f}, confidence >= {abstention.min_confidence:.3f}"
                f"{', answers quoted from the passages only' if abstention.require_quote else ''}"
                f"{', answers from the named document only' if abstention.require_named_document else ''}"
            )
            outcome = self.decide(self.test, self.read(reader, self.test), abstention)
        self.readers[name] = (reader, abstention)
        index = self.results["index"]
        self.record(
            name,
            outcome,
            setup_seconds=setup_seconds + (index["build_seconds"] or 0.0),
            setup=setup,
            peak_mb=max(peak.mb, peak_mb, index["peak_memory_mb"] or 0.0),
            disk_mb=disk_mb + index["disk_mb"],
            extra=self.retrieval_extra(outcome, abstention, reader.name),
        )

    def stage_closed_book(self) -> None:
        self.log(f"closed-book, plain prompt: {len(self.test)} questions")
        with PeakMemory() as peak:
            outcome = self.answer(self.base, "plain", self.test)
        self.record("closed-book", outcome, setup_seconds=0.0, setup={"what": "nothing"}, peak_mb=peak.mb, disk_mb=self.results["model"]["disk_mb"])

    def stage_rag(self) -> None:
        c = self.config
        self.log(f"RAG (hybrid, k={c.k}, {c.context} context, {c.decoding} decoding, {c.shots} worked examples): {len(self.test)} questions")
        started = time.perf_counter()
        examples = self.worked_examples()
        setup = {
            "what": "index build + retrieval for the worked examples",
            "index_build_seconds": self.results["index"]["build_seconds"],
            "shots": c.shots,
            "example_pool": len(examples) if examples is not None else 0,
        }
        self.run_retrieval_strategy(
            "rag",
            self.lm_reader(self.base, examples=examples),
            setup_seconds=time.perf_counter() - started,
            setup=setup,
            peak_mb=0.0,
            disk_mb=self.results["model"]["disk_mb"],
            max_hallucinated=self.hallucination_budget(),
        )

    def hallucination_budget(self) -> float | None:
        """Plain RAG's hallucination budget on the calibration questions (None: the right - hallucinated
        criterion): `hallucination_budget`, or a third of closed-book's rate on those same train questions."""
        c = self.config
        if c.plain_rag_abstention == "net":
            return None
        if c.hallucination_budget is not None:
            budget = {"value": c.hallucination_budget, "from": "hallucination_budget (config)"}
        else:
            outcome = self.answer(self.base, "plain", self.calibration)
            closed_book = summarise(outcome["predictions"], ci=False)["hallucination_rate_all"]
            budget = {
                "value": closed_book / 3,
                "closed_book_hallucinated": closed_book,
                "from": f"a third of closed-book's (plain prompt) hallucination rate on the {len(self.calibration)} calibration train questions",
            }
        self.results["hallucination_budget"] = {**budget, "applies_to": "rag"}
        self.log(f"rag: hallucination budget {budget['value']:.3f} ({budget['from']})")
        return budget["value"]

    def train_span_reader(self, rows: list[dict], calibration: list[dict], run_dir: Path):
        """An extractive reader trained on `rows` into `run_dir`, its own thresholds chosen on `calibration`; returns
        the reader. The calibration readings made for those thresholds are kept: `calibrate` chooses on them again."""
        from tunelab.rag.train_reader import train_reader_on

        c = self.config
        trained = train_reader_on(
            rows,
            self.contexts(rows),
            calibration,
            self.contexts(calibration),
            run_dir,
            settings=self.context_settings(),
            model=c.reader_model,
            epochs=c.reader_epochs,
            seed=c.seed,
            overwrite=True,
            progress=self.progress,
            calibration_misses=self.simulated_misses(calibration) if c.miss_abstention else (),
            min_miss_abstention=c.miss_abstention,
            miss_kind=c.miss_kind,
            distractors=c.reader_distractors,
            index=self._index,
        )
        self._readings[self._reading_key(trained.reader, calibration, self.context_settings().context)] = trained.readings
        if trained.misses is not None:
            self._readings[self._reading_key(trained.reader, calibration, "missed")] = trained.misses
        return trained.reader

    def stage_extractive_rag(self) -> None:
        from tunelab.rag.readers import SpanReader

        c = self.config
        run_dir = self.out / "runs" / "extractive-reader"
        fields = len(self.reader_training) - len(self.training)
        self.log(
            f"extractive reader ({c.reader_model}) on {len(self.training)} train questions + {fields} field questions, {c.reader_epochs:g} epochs; "
            f"thresholds on {len(self.reader_calibration)} calibration questions ({len(self.reader_calibration) - len(self.calibration)} about unseen fields)"
        )
        with PeakMemory() as peak:
            if c.reader_run:  # trained before (e.g. by an earlier run of these settings): only its thresholds are chosen here
                run_dir = Path(c.reader_run).expanduser()
                if not (run_dir / "metrics.json").is_file():
                    raise TunelabError(f"reader_run '{c.reader_run}' is not a finished reader run", "give the runs/extractive-reader folder of an earlier run")
                retrieval_seconds, seconds = 0.0, 0.0
                reader = SpanReader(run_dir)
            else:
                started = time.perf_counter()
                self.contexts(self.reader_training + self.reader_calibration)  # retrieved here so that retrieval is timed apart from training
                retrieval_seconds = time.perf_counter() - started
                started = time.perf_counter()
                reader = self.train_span_reader(self.reader_training, self.reader_calibration, run_dir)
                seconds = time.perf_counter() - started
        metrics = json.loads((run_dir / "metrics.json").read_text())
        self.results["extractive_reader_run"] = str(run_dir)
        self.run_retrieval_strategy(
            "extractive+rag",
            reader,
            setup_seconds=seconds + retrieval_seconds,
            peak_mb=peak.mb,
            setup={
                "what": "index build + retrieval for train + extractive reader fine-tuning"
                + (f" (the reader was trained before: reader_run {c.reader_run}; not timed here)" if c.reader_run else ""),
                "reader_training_seconds": seconds,
                "train_retrieval_seconds": retrieval_seconds,
                "train_runtime_s": metrics["train"]["train_runtime_s"],
                "examples": len(self.reader_training),
                "field_questions": fields,
                "index_build_seconds": self.results["index"]["build_seconds"],
            },
            disk_mb=disk_mb(run_dir / "model"),
            calibration=self.reader_calibration,
            min_miss_abstention=c.miss_abstention,
        )

    def stage_best_prompt(self) -> None:
        c = self.config
        self.log(f"choosing the best of {', '.join(c.templates)} on {len(self.select)} train questions by {c.select_by}")
        started = time.perf_counter()
        with PeakMemory() as peak:
            scores = {}
            for name in c.templates:
                outcome = self.answer(self.base, name, self.select)
                scores[name] = summarise(outcome["predictions"], ci=False)
            best = max(c.templates, key=lambda n: (scores[n][c.select_by], -scores[n]["hallucination_rate_all"]))
            selection_seconds = time.perf_counter() - started
            self.log(f"best template on train: {best}")
            outcome = self.answer(self.base, best, self.test)
        self.results["template_selection"] = {"by": c.select_by, "questions": len(self.select), "scores": scores, "chosen": best, "seconds": selection_seconds}
        self.record(
            "best-prompt",
            outcome,
            setup_seconds=selection_seconds,
            setup={"what": "template selection on train", "chosen": best},
            peak_mb=peak.mb,
            disk_mb=self.results["model"]["disk_mb"],
        )

    def _sft(self, name: str, rows: list[dict], packing: bool = False) -> tuple[Path, float, dict]:
        from tunelab.lm.config import SFTConfig
        from tunelab.lm.sft import sft

        c = self.config
        data = self.out / f"{name}-train.jsonl"
        atomic.write_text(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        run_dir = self.out / "runs" / name
        config = SFTConfig(
            model=c.model,
            data=str(data),
            epochs=c.epochs,
            lr=c.sft_lr,
            batch_size=c.sft_batch_size,
            eval_batch_size=c.sft_batch_size,
            eval_fraction=0.05,
            samples=0,
            out=str(run_dir),
            overwrite=True,
            seed=c.seed,
            packing=packing,
        )
        started = time.perf_counter()
        sft(config, progress=self.progress)
        seconds = time.perf_counter() - started
        metrics = json.loads((run_dir / "metrics.json").read_text())
        return run_dir, seconds, metrics

    def stage_fine_tuned(self) -> None:
        from tunelab.lm.generate import Generator

        plain = load_template("plain")
        rows = [{"prompt": plain.render(r["question"]), "response": r["answer"]} for r in self.sft_rows]
        self.log(f"LoRA SFT on {len(rows)} train question/answer pairs")
        with PeakMemory() as peak:
            run_dir, seconds, metrics = self._sft("fine-tuned", rows)
            self.ft = Generator(run_dir)
            outcome = self.answer(self.ft, "plain", self.test)
        self.results["fine_tuned_run"] = str(run_dir)
        self.record(
            "fine-tuned",
            outcome,
            setup_seconds=seconds,
            setup={
                "what": "LoRA SFT",
                "train_runtime_s": metrics["train"]["train_runtime_s"],
                "examples": len(rows),
                "eval_loss_before": metrics["eval_before"]["loss"],
                "eval_loss_after": metrics["eval_after"]["loss"],
            },
            peak_mb=peak.mb,
            disk_mb=self.results["model"]["disk_mb"] + disk_mb(run_dir / "model"),
        )

    def stage_fine_tuned_rag(self) -> None:
        from tunelab.lm.generate import Generator
        from tunelab.rag.reader_data import reader_examples, sft_examples

        grounded = load_template("grounded")
        started = time.perf_counter()
        contexts = self.contexts(self.rag_sft_rows)
        retrieval_seconds = time.perf_counter() - started
        # The generative reader learns the skill, not the facts: the gold line among distractor lines
        # -> copy its span; no gold line shown (a retrieval miss, or another document's lines) -> "I don't know".
        examples = reader_examples(self.rag_sft_rows, contexts, seed=self.config.seed)
        rows = sft_examples(examples, grounded)
        taught_idk = sum(1 for e in examples if not e["answer"])
        self.log(f"LoRA SFT of the reader on {len(rows)} (question + focused context -> answer) pairs, {taught_idk} taught to abstain")
        with PeakMemory() as peak:
            run_dir, seconds, metrics = self._sft("fine-tuned-rag", rows, packing=True)
            self.ft_rag = Generator(run_dir)
        self.results["fine_tuned_rag_run"] = str(run_dir)
        self.run_retrieval_strategy(
            "fine-tuned+rag",
            self.lm_reader(self.ft_rag),
            setup_seconds=seconds + retrieval_seconds,
            peak_mb=peak.mb,
            setup={
                "what": "index build + retrieval for train + LoRA SFT of the reader",
                "train_runtime_s": metrics["train"]["train_runtime_s"],
                "sft_seconds": seconds,
                "train_retrieval_seconds": retrieval_seconds,
                "index_build_seconds": self.results["index"]["build_seconds"],
                "examples": len(rows),
                "taught_to_abstain": taught_idk,
                "distractor_examples": sum(1 for e in examples if e["distractor"]),
                "eval_loss_before": metrics["eval_before"]["loss"],
                "eval_loss_after": metrics["eval_after"]["loss"],
            },
            disk_mb=self.results["model"]["disk_mb"] + disk_mb(run_dir / "model"),
        )

    def stage_ablation(self) -> None:
        """The retrieval strategies' readers with the other decoding and the other context, scored
        without abstention thresholds (the same for every variant), so that only the variant differs."""
        c = self.config
        variants = {}
        for name, (reader, _) in self.readers.items():
            lm = hasattr(reader, "decoding")
            # The trained generative reader learned on focused context: only its decoding is varied.
            shown = (True, False) if getattr(reader, "examples", None) is not None else (False,)
            for context, decoding, with_examples in (
                (kind, decoding, with_examples)
                for kind in (("focused",) if name == "fine-tuned+rag" else ("focused", "chunks"))
                for decoding in (("grounded", "free") if lm else (None,))
                # Worked examples in whole chunks would make prompts several times longer: chunks are compared without them.
                for with_examples in (shown if kind == "focused" else (False,))
            ):
                label = f"{name} | {context} | {decoding or 'span'}" + ("" if with_examples == shown[0] else " | no examples")
                examples = self.worked_examples(context) if with_examples else None
                variant = self.lm_reader(reader.generator, decoding, examples) if lm else reader
                readings = self.read(variant, self.test, context)
                outcome = self.decide(self.test, readings, None, context)
                summary = summarise(outcome["predictions"], seed=c.seed)
                variants[label] = {
                    "strategy": name,
                    "context": self.context_settings(context).to_dict(),
                    "decoding": decoding or "span",
                    "shots": examples.shots if examples is not None else 0,
                    **{
                        k: summary[k]
                        for k in ("contains", "contains_ci95", "exact_match", "f1", "abstention_rate", "hallucination_rate_all", "hallucination_rate_all_ci95")
                    },
                    "latency": outcome["latency"],
                    "answer_in_context": float(np.mean([p["answer_in_context"] for p in outcome["predictions"]])),
                }
                self.log(f"ablation {label}: right {summary['contains']:.3f}  hallucinated {summary['hallucination_rate_all']:.3f}")
                self.results["ablation"] = {
                    "note": "no abstention thresholds; test questions; each variant differs from its strategy in context or decoding only",
                    "variants": variants,
                }
                self.save()

    def stage_leave_kinds_out(self) -> None:
        """Generalisation: an extractive reader trained, and its thresholds chosen, without some question
        kinds, tested on those kinds; next to the in-kind reader on the same test questions."""
        c = self.config
        held = set(c.held_out_kinds)
        training = [r for r in self.reader_training if r.get("kind") not in held]  # field questions never have a held-out kind
        calibration = [r for r in self.reader_calibration if r.get("kind") not in held]  # seen kinds + the calibration fields
        test = [r for r in self.test if r.get("kind") in held]
        if not test or not training or not calibration:
            self.results["leave_kinds_out"] = {"skipped": f"no test or train questions of the kinds {sorted(held)}"}
            return
        run_dir = self.out / "runs" / "extractive-reader-held-out-kinds"
        self.log(f"leave-kinds-out: reader without {', '.join(sorted(held))} ({len(training)} train questions), tested on {len(test)}")
        reader = self.train_span_reader(training, calibration, run_dir)
        held_out = self.calibrate(reader, rows=calibration, min_miss_abstention=c.miss_abstention)
        held_out.chosen_on = "train (calibration questions of the seen kinds and the calibration fields)"
        out_of_kind = summarise(self.decide(test, self.read(reader, test), held_out)["predictions"], seed=c.seed)
        in_reader, in_abstention = self.readers["extractive+rag"]
        in_kind = summarise(self.decide(test, self.read(in_reader, test), in_abstention)["predictions"], seed=c.seed)
        keys = ("contains", "contains_ci95", "hallucination_rate_all", "abstention_rate")
        self.results["leave_kinds_out"] = {
            "held_out_kinds": sorted(held),
            "test_questions": len(test),
            "train_questions": len(training),
            "held_out_reader": {k: out_of_kind[k] for k in keys},
            "in_kind_reader": {k: in_kind[k] for k in keys},
            "points_lost": round(100 * (in_kind["contains"] - out_of_kind["contains"]), 1),
            "abstention": held_out.to_dict(),
        }
        self.log(f"leave-kinds-out: right {out_of_kind['contains']:.3f} held out vs {in_kind['contains']:.3f} in kind")

    def stage_adaptability(self) -> None:
        from tunelab.rag.index import build_index, open_index

        c = self.config
        if self.documents is None:
            self.results["adaptability"] = {"skipped": "the index's source documents are unknown (built from a list of documents)"}
            return
        new_docs, probes = edit_knowledge(self.documents, self.test + self.select + self.calibration + self.training, changes=c.changes, seed=c.seed)
        edited_dir = self.out / "index-edited"
        shutil.copytree(self.out / "index", edited_dir)
        self.log(f"adaptability: {sum(p['change'] == 'edited' for p in probes)} facts edited, 1 country added; re-indexing incrementally")
        report = build_index(new_docs, edited_dir, model=c.embed_model, embedder=self.embedder)
        edited_index = open_index(edited_dir, embedder=self.embedder)
        template = self.results.get("template_selection", {}).get("chosen", "plain")
        closed = {"closed-book": (self.base, "plain"), "best-prompt": (self.base, template), "fine-tuned": (getattr(self, "ft", None), "plain")}
        per_strategy = {}
        try:
            for name in c.strategies:
                if name in closed:
                    generator, template_name = closed[name]
                    if generator is None:
                        continue
                    outcome = self.answer(generator, template_name, probes)
                elif name in self.readers:
                    reader, abstention = self.readers[name]
                    outcome = self.decide(probes, self.read(reader, probes, index=edited_index), abstention, index=edited_index)
                else:
                    continue
                retrieval = name in RETRIEVAL_STRATEGIES
                for p, probe in zip(outcome["predictions"], probes):
                    p["old_answer"], p["change"] = probe["old_answer"], probe["change"]
                    p["stale"] = float(says_old_answer(p["prediction"], probe["old_answer"]))
                summary = summarise(outcome["predictions"], ci=False)
                self.save_predictions(f"adapt-{name}", outcome["predictions"])
                per_strategy[name] = {
                    "contains": summary["contains"],
                    "exact_match": summary["exact_match"],
                    "abstention_rate": summary["abstention_rate"],
                    "right": int(sum(p["contains"] for p in outcome["predictions"])),
                    "probes": len(probes),
                    "stale_rate": float(np.mean([p["stale"] for p in outcome["predictions"]])),
                    "picks_up_without_retraining": summary["contains"] > 0,
                    "update": "incremental re-index" if retrieval else "retraining (not done: new facts stay unknown)",
                    "update_seconds": report.seconds if retrieval else None,
                    "retraining_estimate_seconds": None if retrieval else self._retrain_estimate(name),
                }
        finally:
            edited_index.close()
        self.results["adaptability"] = {"probes": probes, "reindex": report.to_dict(), "strategies": per_strategy}

    def _retrain_estimate(self, name: str) -> float | None:
        """What picking up the change would cost a weights-only strategy: its measured SFT time."""
        if name == "fine-tuned":
            return self.results["strategies"].get("fine-tuned", {}).get("setup_seconds")
        if name in ("closed-book", "best-prompt"):
            return self.results["strategies"].get("fine-tuned", {}).get("setup_seconds")  # it would have to become a fine-tuned model
        return None


def _model_folder(model: str) -> Path:
    from tunelab.lm.load import resolve_lm

    return Path(resolve_lm(model).base)


def _environment() -> dict:
    """hardware.environment plus what a latency on a shared machine depends on: threads, CPUs and load."""
    import os

    from tunelab import hardware

    return {
        **hardware.environment(hardware.resolve_precision("auto")),
        "threads": hardware.torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def run_strategies(config: StrategiesConfig, progress: bool = True) -> dict:
    """Run the comparison and write results.json, predictions/, comparison.md, accuracy_vs_cost.png and report.html."""
    pipeline = Pipeline(config, progress)
    try:
        return pipeline.run()
    except BaseException:
        if pipeline.out.exists() and pipeline.results.get("strategies"):
            pipeline.results["complete"] = False
            try:
                pipeline.finish()  # what was measured stays readable
            except Exception:
                pass
        raise
    finally:
        if pipeline._index is not None:
            pipeline._index.close()
