"""`tunelab strategies`: closed-book, best prompt, RAG, fine-tuned, fine-tuned + RAG on the same questions.

    from tunelab.strategies import StrategiesConfig, run_strategies
    results = run_strategies(StrategiesConfig(qa="qa", kb="factbook", model="smollm2"))

Every strategy answers the same seeded sample of test questions with the same model, greedy
decoding and token budget; only what the strategy changes (prompt, retrieved context, weights)
differs. results.json is rewritten after every stage, so an interrupted run still leaves every
measured number behind (marked incomplete).
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
from tunelab.errors import TunelabError
from tunelab.prompts.evaluate import format_context, latency_summary, progress_bar, run_template
from tunelab.prompts.loader import load_template
from tunelab.evaluate.answers import score, summarise
from tunelab.strategies.adapt import edit_knowledge, says_old_answer
from tunelab.strategies.config import StrategiesConfig
from tunelab.strategies.memory import PeakMemory, folder_mb

STRATEGIES = ("closed-book", "best-prompt", "rag", "fine-tuned", "fine-tuned+rag")
IDK = "I don't know"


def read_split(qa_dir: Path, name: str) -> list[dict]:
    from tunelab.data.factbook_qa import read_qa

    path = qa_dir / f"{name}.jsonl"
    if not path.is_file():
        raise TunelabError(f"'{qa_dir}' has no {name}.jsonl", "build the QA folder with: tunelab data factbook-qa --out DIR")
    rows = [r for r in read_qa(path) if r.get("answer")]
    if not rows:
        raise TunelabError(f"{path} has no rows with an answer", "each row needs question and answer")
    return rows


def sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:n]


class Pipeline:
    def __init__(self, config: StrategiesConfig, progress: bool = True):
        self.config = config.quick_sized()
        self.progress = progress
        self.out = Path(self.config.out).expanduser()
        self.results: dict[str, Any] = {"config": self.config.model_dump(), "complete": False, "strategies": {}, "stages_seconds": {}}
        self._index = None
        self._retrieval_cache: dict[tuple[str, str], tuple[list, float, float]] = {}

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
    def retrieve(self, index, question: str) -> tuple[list, float, float]:
        """(hits, best similarity, seconds) for a question, hybrid mode."""
        t = time.perf_counter()
        got = index.retrieve(question, "hybrid", self.config.k, need_similarity=True)
        return got.hits, got.best_similarity, time.perf_counter() - t

    def contexts(self, index, rows: list[dict]) -> tuple[list[str], list[float], list[float]]:
        contexts, seconds, best = [], [], []
        for row in rows:
            hits, similarity, took = self.retrieve(index, row["question"])
            contexts.append(format_context(hits, self.config.context_chars))
            seconds.append(took)
            best.append(similarity)
        return contexts, seconds, best

    # stages -----------------------------------------------------------------------------------
    def run(self) -> dict:
        c = self.config
        qa_dir = Path(c.qa).expanduser()
        train_rows, test_rows = read_split(qa_dir, "train"), read_split(qa_dir, "test")
        if self.out.exists() and any(self.out.iterdir()) and not c.overwrite:
            raise TunelabError(f"'{self.out}' is not empty", "choose another --out, or pass --overwrite")
        if self.out.exists() and c.overwrite:
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.test = sample(test_rows, c.test_questions, c.seed)
        shuffled = sample(train_rows, len(train_rows), c.seed + 1)
        self.select = shuffled[: c.select_questions]
        self.sft_rows = shuffled[c.select_questions : c.select_questions + c.train_pairs]
        self.rag_sft_rows = shuffled[c.select_questions : c.select_questions + c.rag_train_pairs]
        self.results.update(questions={"test": len(self.test), "select": len(self.select), "sft": len(self.sft_rows), "rag_sft": len(self.rag_sft_rows), "qa": str(qa_dir)})
        if len(self.test) < c.test_questions:
            self.results["questions"]["note"] = f"test.jsonl holds only {len(self.test)} questions"

        from tunelab.lm.generate import Generator
        from tunelab.rag.embed import SentenceEmbedder

        self.embedder = SentenceEmbedder(c.embed_model)
        with PeakMemory() as peak:
            started = time.perf_counter()
            self.base = Generator(c.model)
            load_seconds = time.perf_counter() - started
        self.results["model"] = {"name": c.model, "load_seconds": load_seconds, "disk_mb": folder_mb(_model_folder(c.model)), "rss_mb_loaded": peak.mb}
        self.results["environment"] = _environment()

        wanted = set(c.strategies)
        stages = [stage for name, stage in (
            ("closed-book", self.stage_closed_book), ("rag", self.stage_rag), ("best-prompt", self.stage_best_prompt),
            ("fine-tuned", self.stage_fine_tuned), ("fine-tuned+rag", self.stage_fine_tuned_rag),
        ) if name in wanted]
        if wanted & {"rag", "fine-tuned+rag"} or c.adaptability:
            stages.insert(0, self.stage_index)
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

    def finish(self) -> None:
        from tunelab.strategies.report import write_report

        self.save()
        write_report(self.out, self.results)

    def stage_index(self) -> None:
        from tunelab.rag.documents import load_documents
        from tunelab.rag.index import build_index, open_index, read_manifest

        c = self.config
        kb = Path(c.kb).expanduser()
        index_dir = self.out / "index"
        if kb.is_dir() and read_manifest(kb) is not None:
            # An existing index: its build time is not ours to measure; reuse a copy (adaptability edits the copy).
            self.log(f"copying the index {kb}")
            shutil.copytree(kb, index_dir)
            source = read_manifest(kb).get("source", "")
            self.documents = load_documents(source) if source and source != "documents" else None
            seconds, report = None, None
        else:
            self.log(f"indexing {c.kb}")
            self.documents = load_documents(c.kb)
            with PeakMemory() as peak:
                report = build_index(self.documents, index_dir, model=c.embed_model, embedder=self.embedder, progress=self.progress)
            seconds = report.seconds
        self._index = open_index(index_dir, embedder=self.embedder)
        self.results["index"] = {
            "build_seconds": seconds,
            "prebuilt": seconds is None,
            "chunks": report.chunks_total if report else None,
            "documents": len(self.documents) if self.documents else None,
            "disk_mb": folder_mb(index_dir),
            "peak_memory_mb": peak.mb if report else None,
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
        self.log(f"{name}: contains {summary['contains']:.3f}  EM {summary['exact_match']:.3f}  F1 {summary['f1']:.3f}  hallucination {summary['hallucination_rate_all']:.3f}  abstain {summary['abstention_rate']:.3f}")

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

    def answer(self, generator, template_name: str, rows: list[dict], with_retrieval: bool = False) -> dict:
        with progress_bar(self.progress, len(rows)) as bar:
            task = bar.add_task(f"{template_name}{' + retrieval' if with_retrieval else ''}", total=len(rows)) if bar else None
            return self._answer(generator, template_name, rows, with_retrieval, (lambda n: bar.advance(task, n)) if bar else None)

    def _answer(self, generator, template_name: str, rows: list[dict], with_retrieval: bool, advance) -> dict:
        from tunelab.rag.answer import MIN_SIMILARITY

        template = load_template(template_name)
        if not with_retrieval:
            return run_template(template, rows, generator, max_new_tokens=self.config.max_new_tokens, batch_size=self.config.batch_size, progress=advance)
        contexts, seconds, best = self.contexts(self._index, rows)
        # The RAG feature's abstain path: nothing similar enough retrieved -> "I don't know" without the model.
        keep = [i for i, b in enumerate(best) if b == b and b >= MIN_SIMILARITY]
        outcome = run_template(
            template, [rows[i] for i in keep], generator, contexts=[contexts[i] for i in keep],
            extra_seconds=[seconds[i] for i in keep], max_new_tokens=self.config.max_new_tokens, batch_size=self.config.batch_size, progress=advance,
        ) if keep else {"template": template.id, "predictions": []}
        by_row = dict(zip(keep, outcome["predictions"]))
        predictions = []
        for i, row in enumerate(rows):
            p = by_row.get(i) or {
                "question": row["question"], "answer": row["answer"], "prediction": IDK, "seconds": seconds[i], "prompt_tokens": 0,
                **score(IDK, row["answer"], row.get("aliases") or [], row["question"]), "retrieval_abstained": True,
            }
            p["retrieval_seconds"] = seconds[i]
            predictions.append(p)
        return {"template": template.id, "predictions": predictions, "latency": latency_summary([p["seconds"] for p in predictions])}

    def stage_closed_book(self) -> None:
        self.log(f"closed-book, plain prompt: {len(self.test)} questions")
        with PeakMemory() as peak:
            outcome = self.answer(self.base, "plain", self.test)
        self.record("closed-book", outcome, setup_seconds=0.0, setup={"what": "nothing"}, peak_mb=peak.mb, disk_mb=self.results["model"]["disk_mb"])

    def stage_rag(self) -> None:
        self.log(f"RAG (hybrid, k={self.config.k}): {len(self.test)} questions")
        with PeakMemory() as peak:
            outcome = self.answer(self.base, "grounded", self.test, with_retrieval=True)
        index = self.results["index"]
        self.record("rag", outcome, setup_seconds=index["build_seconds"] or 0.0, setup={"what": "index build", "index_build_seconds": index["build_seconds"]},
                    peak_mb=max(peak.mb, index["peak_memory_mb"] or 0.0), disk_mb=self.results["model"]["disk_mb"] + index["disk_mb"],
                    extra={"retrieval_abstentions": sum(1 for p in outcome["predictions"] if p.get("retrieval_abstained"))})

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
        self.record("best-prompt", outcome, setup_seconds=selection_seconds, setup={"what": "template selection on train", "chosen": best},
                    peak_mb=peak.mb, disk_mb=self.results["model"]["disk_mb"])

    def _sft(self, name: str, rows: list[dict]) -> tuple[Path, float, dict]:
        from tunelab.lm.config import SFTConfig
        from tunelab.lm.sft import sft

        c = self.config
        data = self.out / f"{name}-train.jsonl"
        atomic.write_text(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        run_dir = self.out / "runs" / name
        config = SFTConfig(
            model=c.model, data=str(data), epochs=c.epochs, lr=c.sft_lr, batch_size=c.sft_batch_size, eval_batch_size=c.sft_batch_size,
            eval_fraction=0.05, samples=0, out=str(run_dir), overwrite=True, seed=c.seed,
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
        self.record("fine-tuned", outcome, setup_seconds=seconds,
                    setup={"what": "LoRA SFT", "train_runtime_s": metrics["train"]["train_runtime_s"], "examples": len(rows), "eval_loss_before": metrics["eval_before"]["loss"], "eval_loss_after": metrics["eval_after"]["loss"]},
                    peak_mb=peak.mb, disk_mb=self.results["model"]["disk_mb"] + folder_mb(run_dir / "model"))

    def stage_fine_tuned_rag(self) -> None:
        from tunelab.lm.generate import Generator
        from tunelab.evaluate.answers import contains_answer

        grounded = load_template("grounded")
        started = time.perf_counter()
        contexts, _, _ = self.contexts(self._index, self.rag_sft_rows)
        rows, taught_idk = [], 0
        for row, context in zip(self.rag_sft_rows, contexts):
            # Where retrieval missed the answer, the target is "I don't know": the model learns to
            # answer from the context, not from memory (training it to answer anyway teaches guessing).
            present = contains_answer(context, row["answer"], row.get("aliases") or [])
            taught_idk += not present
            rows.append({"prompt": grounded.render(row["question"], context), "response": row["answer"] if present else IDK})
        retrieval_seconds = time.perf_counter() - started
        self.log(f"LoRA SFT on {len(rows)} (question + retrieved context -> answer) pairs, {taught_idk} taught to abstain")
        with PeakMemory() as peak:
            run_dir, seconds, metrics = self._sft("fine-tuned-rag", rows)
            self.ft_rag = Generator(run_dir)
            outcome = self.answer(self.ft_rag, "grounded", self.test, with_retrieval=True)
        index = self.results["index"]
        self.results["fine_tuned_rag_run"] = str(run_dir)
        self.record("fine-tuned+rag", outcome, setup_seconds=seconds + retrieval_seconds + (index["build_seconds"] or 0.0),
                    setup={"what": "index build + retrieval for train + LoRA SFT", "train_runtime_s": metrics["train"]["train_runtime_s"], "sft_seconds": seconds,
                           "train_retrieval_seconds": retrieval_seconds, "index_build_seconds": index["build_seconds"], "examples": len(rows), "taught_to_abstain": taught_idk,
                           "eval_loss_before": metrics["eval_before"]["loss"], "eval_loss_after": metrics["eval_after"]["loss"]},
                    peak_mb=max(peak.mb, index["peak_memory_mb"] or 0.0), disk_mb=self.results["model"]["disk_mb"] + index["disk_mb"] + folder_mb(run_dir / "model"),
                    extra={"retrieval_abstentions": sum(1 for p in outcome["predictions"] if p.get("retrieval_abstained"))})

    def stage_adaptability(self) -> None:
        from tunelab.rag.index import build_index, open_index

        c = self.config
        if self.documents is None:
            self.results["adaptability"] = {"skipped": "the index's source documents are unknown (built from a list of documents)"}
            return
        new_docs, probes = edit_knowledge(self.documents, self.test + self.select + self.sft_rows, changes=c.changes, seed=c.seed)
        edited_dir = self.out / "index-edited"
        shutil.copytree(self.out / "index", edited_dir)
        self.log(f"adaptability: {sum(p['change'] == 'edited' for p in probes)} facts edited, 1 country added; re-indexing incrementally")
        report = build_index(new_docs, edited_dir, model=c.embed_model, embedder=self.embedder)
        edited_index = open_index(edited_dir, embedder=self.embedder)
        template = self.results.get("template_selection", {}).get("chosen", "plain")
        runs = {
            "closed-book": (self.base, "plain", False),
            "best-prompt": (self.base, template, False),
            "rag": (self.base, "grounded", True),
            "fine-tuned": (getattr(self, "ft", None), "plain", False),
            "fine-tuned+rag": (getattr(self, "ft_rag", None), "grounded", True),
        }
        per_strategy = {}
        original = self._index
        try:
            self._index = edited_index
            for name, (generator, template_name, retrieval) in runs.items():
                if generator is None or name not in c.strategies:
                    continue
                outcome = self.answer(generator, template_name, probes, with_retrieval=retrieval)
                for p, probe in zip(outcome["predictions"], probes):
                    p["old_answer"], p["change"] = probe["old_answer"], probe["change"]
                    p["stale"] = float(says_old_answer(p["prediction"], probe["old_answer"]))
                summary = summarise(outcome["predictions"], ci=False)
                self.save_predictions(f"adapt-{name}", outcome["predictions"])
                per_strategy[name] = {
                    "contains": summary["contains"], "exact_match": summary["exact_match"], "abstention_rate": summary["abstention_rate"],
                    "stale_rate": float(np.mean([p["stale"] for p in outcome["predictions"]])),
                    "picks_up_without_retraining": summary["contains"] > 0,
                    "update": "incremental re-index" if retrieval else "retraining (not done: new facts stay unknown)",
                    "update_seconds": report.seconds if retrieval else None,
                    "retraining_estimate_seconds": None if retrieval else self._retrain_estimate(name),
                }
        finally:
            self._index = original
            edited_index.close()
        self.results["adaptability"] = {
            "probes": probes,
            "reindex": report.to_dict(),
            "strategies": per_strategy,
        }

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
    import os
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": os.getloadavg()}


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
