"""Building the Factbook index on each embedding runtime, in one process run: time and retrieval recall.

    torch-fp32   sentence-transformers in PyTorch fp32: what an AVX2-only CPU runs (no fast bf16 there)
    torch-bf16   the same under bf16 autocast, tunelab's torch default where the CPU has AVX-512 BF16 / AMX (skipped elsewhere)
    onnx         ONNX Runtime fp32 (tunelab.runtime.export.export_embedder, the graph `--backend onnx` uses)
    onnx-int8    dynamic int8 of that graph, the INT8_RECIPES in order until one keeps recall within the gate
    openvino     the fp32 ONNX graph compiled by OpenVINO (fp32 arithmetic asked for: `--backend openvino`)
    openvino-int8  NNCF static int8 of that graph, calibrated as `--backend openvino-int8` is (embed_choice.calibration_feeds)

Each variant builds a LanceDB + BM25 index (tunelab.rag.index.build_index: chunk, embed, store) of the same
seeded sample of Factbook documents (--documents; the whole corpus on one thread does not fit the 20-minute
budget), then scores dense retrieval on the built-in QA set's TRAIN questions about those documents:
recall@5 by document, the measure of the embedding gate (tunelab.rag.embed_choice), against torch-fp32's.
Build times (mean over --rounds interleaved rounds; wall clock and the process's CPU time) are also
scaled to the whole corpus by its chunk count. Prints one JSON document (also written
to --json-out) with the thread count and the CPU flags.

    flock /tmp/tunelab-bench.lock nice -n 5 env TUNELAB_THREADS=1 python benchmarks/index_speed.py
    flock /tmp/tunelab-bench.lock nice -n 5 env TUNELAB_THREADS=1 python benchmarks/index_speed.py --max-isa avx2 --rounds 1 \
        --json-out benchmarks/results/index_speed_avx2.json   # the AVX2-only proxy: torch and OpenVINO capped to AVX2
    python benchmarks/index_speed.py --quick          # smoke check, tiny

The OpenVINO rows need the optional extra (pip install 'tunelab[openvino]'); without it they are skipped, and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "minilm"
TARGET_SECONDS = 180  # issue #23: the Factbook index in <= 3 minutes on an AVX2-only 2-core CPU
QUICK = dict(documents=4, rounds=1)
# --max-isa avx2: oneDNN (OpenVINO's CPU kernels, PyTorch's) and MKL (PyTorch's fp32 matmuls) read these
# before their first use and then dispatch no wider than AVX2, so this CPU runs what an AVX2-only one would.
ISA_CAPS = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
UNCAPPED = "ONNX Runtime has no switch that caps its kernels' instruction set: capped to AVX2 it would still run AVX-512 and VNNI"
SETUP = {"onnx": "export", "openvino": "compile", "openvino-int8": "calibrate_quantize_compile"}  # what each variant's one-off seconds paid for


def sample_documents(count: int, seed: int):
    from tunelab.rag.documents import load_documents

    documents = load_documents("factbook")
    return documents, random.Random(seed).sample(documents, min(count, len(documents)))


def embedders(workdir: Path, capped: bool = False):
    """(name, embedder or a reason it was skipped, one-off seconds) for each variant, loaded lazily in run order.

    `capped` (--max-isa avx2): only the runtimes whose kernels obey the cap run.
    """
    from tunelab import hardware
    from tunelab.rag.embed import OnnxEmbedder, SentenceEmbedder
    from tunelab.runtime.export import export_embedder

    yield "torch-fp32", SentenceEmbedder(MODEL, bf16=False), 0.0
    if capped:
        yield "torch-bf16", "capped to AVX2: no fast bf16", 0.0
    elif hardware.cpu_bf16_is_fast():
        yield "torch-bf16", SentenceEmbedder(MODEL, bf16=True), 0.0
    else:
        yield "torch-bf16", "this CPU has no fast bf16 (AVX-512 BF16 / AMX)", 0.0
    reference = SentenceEmbedder(MODEL, bf16=False)
    fp32 = workdir / "model.onnx"
    started = time.perf_counter()
    export_embedder(reference.model, fp32)
    if capped:
        for name in ("onnx", "onnx-int8"):
            yield name, UNCAPPED, 0.0
    else:
        yield "onnx", OnnxEmbedder(MODEL, "onnx", fp32, reference.max_tokens, reference.dim), time.perf_counter() - started
        yield "onnx-int8", None, 0.0  # quantized in main, recipe by recipe
    yield from openvino_embedders(reference, fp32, workdir)


def openvino_embedders(reference, fp32: Path, workdir: Path):
    """OpenVINO on the same fp32 graph, and NNCF's int8 of it; the one-off seconds are compiling, and calibrating + quantizing."""
    from tunelab.rag.embed import OnnxEmbedder
    from tunelab.rag.embed_choice import calibration_feeds, factbook_chunks
    from tunelab.runtime.openvino_export import quantize_openvino
    from tunelab.runtime.scorers import not_installed

    for name in ("openvino", "openvino-int8"):
        if not_installed(name):
            yield name, not_installed(name), 0.0
            continue
        started = time.perf_counter()
        path = fp32
        if name == "openvino-int8":
            path = workdir / "openvino.int8.xml"
            feeds = calibration_feeds(reference.tokenizer, [chunk.indexed_text() for chunk in factbook_chunks(reference.tokenizer)], reference.max_tokens)
            quantize_openvino(fp32, path, feeds)
        yield name, OnnxEmbedder(MODEL, name, path, reference.max_tokens, reference.dim), time.perf_counter() - started


def build_and_score(name: str, embedder, documents, questions: list[dict], workdir: Path, round_: int = 1) -> dict:
    from tunelab.rag.builtin import CHUNK_TOKENS, OVERLAP
    from tunelab.rag.evaluate import evaluate_retrieval
    from tunelab.rag.index import build_index, open_index

    load_before = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    folder = workdir / f"index-{name}-{round_}"  # a fresh folder each round: an existing index would embed nothing
    report = build_index(documents, folder, embedder=embedder, chunk_tokens=CHUNK_TOKENS, overlap=OVERLAP)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    with open_index(folder, embedder=embedder) as index:
        dense = evaluate_retrieval(index, questions, ["dense"])["dense"]
    return {
        "build_seconds": round(wall, 1),
        "embed_seconds": round(report.embed_seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "chunks": report.chunks_total,
        "chunks_per_s": round(report.chunks_total / report.embed_seconds, 1),
        "recall@5": dense["recall@5"],
        "recall@1": dense["recall@1"],
        "mrr": dense["mrr"],
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=24, help="Factbook documents indexed (a seeded sample of the 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the four builds, so a change in the machine's load hits each alike")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument(
        "--max-isa", choices=sorted(ISA_CAPS), default=None, help="run only the runtimes that obey an instruction-set cap, capped: an AVX2-only CPU on this one"
    )
    args = parser.parse_args()
    caps = ISA_CAPS.get(args.max_isa, {})
    os.environ.update(caps)  # before torch or OpenVINO is imported
    if args.quick:
        args.documents, args.rounds = QUICK["documents"], QUICK["rounds"]

    from tunelab import hardware
    from tunelab.rag.builtin import CHUNK_TOKENS, OVERLAP, builtin_qa
    from tunelab.rag.chunk import chunk_document
    from tunelab.rag.embed import OnnxEmbedder
    from tunelab.rag.embed_choice import RECALL_GATE
    from tunelab.runtime.export import INT8_RECIPES, quantize

    threads = hardware.set_threads(None)
    started = time.perf_counter()
    all_documents, documents = sample_documents(args.documents, args.seed)
    chosen = {d.doc_id for d in documents}
    train, _test = builtin_qa()  # the test questions are never read here
    questions = [row for row in train if row["doc_id"] in chosen]
    results: dict[str, dict] = {}
    one_off: dict[str, float] = {}
    shape = (0, 0)  # the model's (max_tokens, dim), from the first embedder, for the int8 ONNX embedders
    used: dict = {}  # each variant's embedder (int8: the recipe kept), rebuilt in every later round
    with tempfile.TemporaryDirectory(prefix="index-speed-") as tmp:
        workdir = Path(tmp)
        for name, embedder, setup_seconds in embedders(workdir, capped=bool(caps)):
            if isinstance(embedder, str):
                results[name] = {"skipped": embedder}
                continue
            if name == "onnx-int8":
                reference_recall = results["torch-fp32"]["recall@5"]
                for recipe in INT8_RECIPES:  # as the gate does: fastest recipe first, the next only if recall moved too far
                    int8 = workdir / f"model.int8.{recipe}.onnx"
                    quantize_started = time.perf_counter()
                    quantize(workdir / "model.onnx", int8, recipe)
                    one_off[f"quantize_{recipe}_s"] = round(time.perf_counter() - quantize_started, 1)
                    embedder = OnnxEmbedder(MODEL, "onnx-int8", int8, *shape)
                    used[name] = embedder
                    results[name] = {"recipe": recipe, **build_and_score(name, embedder, documents, questions, workdir)}
                    print(f"{name} ({recipe}): {results[name]['build_seconds']} s, recall@5 {results[name]['recall@5']}", file=sys.stderr, flush=True)
                    if abs(results[name]["recall@5"] - reference_recall) <= RECALL_GATE:
                        break
                continue
            if setup_seconds:
                one_off[f"{name}_{SETUP[name]}_s"] = round(setup_seconds, 1)
            shape = (embedder.max_tokens, embedder.dim)
            used[name] = embedder
            results[name] = build_and_score(name, embedder, documents, questions, workdir)
            print(f"{name}: {results[name]['build_seconds']} s, recall@5 {results[name]['recall@5']}", file=sys.stderr, flush=True)
        rounds = {name: [results[name]] for name in used}
        for round_ in range(2, args.rounds + 1):
            for name, embedder in used.items():
                rounds[name].append(build_and_score(name, embedder, documents, questions, workdir, round_))
                print(f"round {round_} {name}: {rounds[name][-1]['build_seconds']} s", file=sys.stderr, flush=True)
        tokenizer = embedder.tokenizer
        full_chunks = sum(len(chunk_document(d, tokenizer, CHUNK_TOKENS, OVERLAP)) for d in all_documents)

    for name, measured in rounds.items():
        walls, cpus = [m["build_seconds"] for m in measured], [m["cpu_seconds"] for m in measured]
        assert all(m["recall@5"] == measured[0]["recall@5"] for m in measured), f"{name}: recall differs between rounds"
        results[name].update(
            build_seconds=round(statistics.mean(walls), 1),
            build_seconds_rounds=walls,
            cpu_seconds=round(statistics.mean(cpus), 1),
            cpu_seconds_rounds=cpus,
            chunks_per_s=round(measured[0]["chunks"] / statistics.mean(m["embed_seconds"] for m in measured), 1),
        )
        results[name].pop("embed_seconds")
    reference = results["torch-fp32"]
    for figures in results.values():
        if "skipped" in figures:
            continue
        figures["speedup_vs_torch_fp32"] = round(reference["build_seconds"] / figures["build_seconds"], 2)
        # CPU time is what the build costs on an idle core: the wall clock also counts other jobs on the machine.
        figures["cpu_speedup_vs_torch_fp32"] = round(reference["cpu_seconds"] / figures["cpu_seconds"], 2)
        figures["recall@5_gap_vs_torch_fp32"] = round(figures["recall@5"] - reference["recall@5"], 4)
        figures["passes_recall_gate"] = abs(figures["recall@5_gap_vs_torch_fp32"]) <= RECALL_GATE
        figures["full_corpus_build_seconds_estimate"] = round(figures["build_seconds"] * full_chunks / figures["chunks"], 0)
        figures["full_corpus_cpu_seconds_estimate"] = round(figures["cpu_seconds"] * full_chunks / figures["chunks"], 0)
    passing = {name: f for name, f in results.items() if f.get("passes_recall_gate")}
    fastest = min(passing, key=lambda name: passing[name]["build_seconds"])
    out = {
        "what": "Factbook index build (chunk, embed, LanceDB + BM25) per embedding runtime, and dense recall@5 by document on the built-in QA set's train questions",
        "model": MODEL,
        "documents": len(documents),
        "rounds": args.rounds,
        "documents_sample": f"random.Random({args.seed}).sample of the {len(all_documents)} Factbook documents",
        "full_corpus_chunks": full_chunks,
        "train_questions": len(questions),
        "split_used": "train questions only (the gate's split); the test split is not read",
        "threads": threads,
        "threads_note": "run with TUNELAB_THREADS=1 under the bench lock: one thread for torch, ONNX Runtime and OpenVINO alike",
        "cpu_flags": [flag for flag in hardware.SPEED_FLAGS if flag in hardware.cpu_flags()],
        "instruction_set_cap": caps or None,
        "recall_gate": RECALL_GATE,
        "one_off_seconds": one_off,
        "variants": results,
        "fastest_passing": fastest,
        "target": {
            "seconds": TARGET_SECONDS,
            "what": "the whole Factbook index on an AVX2-only 2-core CPU",
            "avx2_proxy": (
                "capped: the variants run here dispatch no wider than AVX2 (instruction_set_cap), as on an AVX2-only CPU"
                if caps
                else "torch-fp32 here stands for the AVX2-only CPU (no fast bf16 there); ONNX Runtime and OpenVINO int8 here use AVX-512 VNNI kernels an AVX2 CPU lacks"
            ),
            "torch_fp32_full_corpus_1_thread_estimate_s": reference["full_corpus_build_seconds_estimate"],
            "fastest_passing_full_corpus_1_thread_estimate_s": passing[fastest]["full_corpus_build_seconds_estimate"],
            "torch_fp32_full_corpus_cpu_seconds_estimate": reference["full_corpus_cpu_seconds_estimate"],
            "fastest_passing_full_corpus_cpu_seconds_estimate": passing[fastest]["full_corpus_cpu_seconds_estimate"],
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
        "environment": hardware.environment("fp32"),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
