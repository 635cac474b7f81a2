"""Causal-LM speed on this machine with the real SmolLM2-135M-Instruct, printed as JSON:

(a) training tokens/s and peak memory of LoRA against full fine-tuning (each in its own process, so
    peak resident memory is that method's alone), with eval loss before/after, through tunelab.lm.sft;
    and LoRA with the stock Trainer loss (logits at every position: the baseline) against tunelab's
    answer-only logits. The prompts carry a context paragraph (--context-words), as retrieval-augmented
    training data does, so most positions are prompt;
(b) generation tokens/s, greedy, float32 against bf16 autocast, same prompt and token count.

    python benchmarks/sft_speed.py --examples 48 --epochs 1 [--methods lora,lora:all-logits,full]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = [
    "photosynthesis",
    "the water cycle",
    "gravity",
    "volcanoes",
    "the moon",
    "rainbows",
    "tides",
    "earthquakes",
    "clouds",
    "magnets",
    "fossils",
    "the seasons",
    "lightning",
    "glaciers",
    "deserts",
    "coral reefs",
]
STYLES = ["in one sentence", "to a child", "briefly", "in simple words"]


def instruction_rows(n: int, context_words: int = 0) -> list[dict[str, str]]:
    """Short, consistent question/answer pairs: a style the model can pick up in a few dozen steps.

    With context_words, each prompt starts with a context paragraph of about that many words (the
    shape of retrieval-augmented training data: a long prompt, a short answer).
    """
    rows = []
    for i in range(n):
        topic, style = TOPICS[i % len(TOPICS)], STYLES[(i // len(TOPICS)) % len(STYLES)]
        prompt = f"Explain {topic} {style}."
        if context_words:
            others = [TOPICS[(i + j) % len(TOPICS)] for j in range(1, context_words)]
            sentences = " ".join(f"Notes on {t} mention {STYLES[j % len(STYLES)]} explanations." for j, t in enumerate(others))
            prompt = "Context: " + " ".join(sentences.split()[:context_words]) + "\n\n" + prompt
        rows.append({"prompt": prompt, "response": f"Answer: {topic.capitalize()} is a natural phenomenon. In short: {topic} explained {style}. Done."})
    return rows


def train_once(variant: str, data: str, out: str, epochs: float, batch_size: int, precision: str) -> dict:
    """variant: "lora" or "full", with ":all-logits" for the stock Trainer loss (logits at every position)."""
    from tunelab.lm.config import SFTConfig
    from tunelab.lm.sft import sft

    method, _, logits = variant.partition(":")
    config = SFTConfig(
        model="smollm2",
        data=data,
        method=method,
        epochs=epochs,
        batch_size=batch_size,
        precision=precision,
        eval_fraction=0.2,
        samples=2,
        sample_tokens=24,
        out=out,
        overwrite=True,
        answer_only_logits=logits != "all-logits",
    )
    started = time.perf_counter()
    metrics = sft(config, progress=False).metrics
    train = metrics["train"]
    return {
        "variant": variant,
        "method": method,
        "logits": "every position" if logits == "all-logits" else "answer positions only",
        "precision": metrics["environment"]["precision"],
        "lr": config.learning_rate,
        "train_examples": train["train_examples"],
        "steps": train["steps"],
        "train_seconds": round(train["train_runtime_s"], 2),
        "train_tokens_per_second": round(train["train_tokens_per_second"], 1),
        "peak_memory_mb": round(train["peak_memory_mb"], 1),
        "trainable_parameters": train["trainable_parameters"],
        "eval_loss_before": round(metrics["eval_before"]["loss"], 4),
        "eval_loss_after": round(metrics["eval_after"]["loss"], 4),
        "perplexity_before": round(metrics["eval_before"]["perplexity"], 2),
        "perplexity_after": round(metrics["eval_after"]["perplexity"], 2),
        "wall_seconds_including_eval_and_samples": round(time.perf_counter() - started, 1),
    }


def generation_speed(new_tokens: int) -> dict:
    from tunelab.lm.generate import Generator, Sampling

    prompt = "Write a short paragraph about the history of bicycles."
    results = {}
    for precision in ("fp32", "bf16"):
        generator = Generator("smollm2", precision=precision)
        generator.complete(prompt, Sampling(max_new_tokens=8))  # warm-up
        # min_new_tokens is not exposed; instead count what was produced and divide by time.
        runs = [generator.complete(prompt, Sampling(max_new_tokens=new_tokens)) for _ in range(2)]
        best = max(runs, key=lambda c: c.tokens_per_second)
        results[precision] = {
            "tokens": best.completion_tokens,
            "seconds": round(best.seconds, 2),
            "tokens_per_second": round(best.tokens_per_second, 2),
            "text_start": best.text[:60],
        }
    results["bf16_over_fp32"] = round(results["bf16"]["tokens_per_second"] / results["fp32"]["tokens_per_second"], 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--methods", default="lora,lora:all-logits,full", help="variants: lora, full, each optionally with :all-logits")
    parser.add_argument("--context-words", type=int, default=150, help="words of context at the head of each prompt (0: none)")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "DATA"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one training run in this process; its peak memory is its own
        print(json.dumps(train_once(args.child[0], args.child[1], args.out, args.epochs, args.batch_size, args.precision)))
        return

    from tunelab import hardware as speed

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "instructions.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in instruction_rows(args.examples, args.context_words)))
        result = {
            "model": "smollm2 (SmolLM2-135M-Instruct)",
            "environment": speed.environment(args.precision),
            "load_average": os.getloadavg()[0],
            "training": [],
        }
        result["context_words"] = args.context_words
        for variant in args.methods.split(","):
            command = [
                sys.executable,
                __file__,
                "--child",
                variant,
                str(data),
                "--out",
                str(Path(tmp) / variant.replace(":", "-")),
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                "--precision",
                args.precision,
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result["training"].append(json.loads(done.stdout.strip().splitlines()[-1]))
        runs = {r["variant"]: r for r in result["training"]}

        def ratio(a: str, b: str) -> dict | None:
            if a not in runs or b not in runs:
                return None
            return {
                "tokens_per_second": round(runs[a]["train_tokens_per_second"] / runs[b]["train_tokens_per_second"], 3),
                "peak_memory": round(runs[a]["peak_memory_mb"] / runs[b]["peak_memory_mb"], 3),
            }

        result["lora_over_full"] = ratio("lora", "full")
        result["answer_only_over_all_logits"] = ratio("lora", "lora:all-logits")
        if not args.skip_generation:
            result["generation"] = generation_speed(args.new_tokens)
        result["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
