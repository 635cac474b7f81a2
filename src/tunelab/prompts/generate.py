"""Batched greedy answers from a causal LM (left padding), for scoring many short answers quickly.

tunelab.lm.generate.Generator answers one prompt at a time (it streams); here a batch of prompts of
similar length goes through one model.generate call, which on a CPU is several times faster per
question. Only the first line of each answer is kept: the answers scored here are short.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class Answered:
    text: str
    seconds: float  # this question's share of its batch's wall time
    prompt_tokens: int
    new_tokens: int


def first_line(text: str) -> str:
    """The answer line; a lead-in ending in ':' ("The answer is:") takes the next line with it."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def answer_batch(
    generator,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> list[Answered]:
    """Greedy answers to `prompts` (user turns of the model's chat template) with a loaded
    tunelab.lm.generate.Generator; results keep the order of `prompts`."""
    import torch

    tokenizer, model = generator.tokenizer, generator.model
    encoded = [generator.encode(p)["input_ids"][0].tolist() for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths batch together
    results: list[Answered | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            started = time.perf_counter()
            with torch.inference_mode(), generator.autocast():
                output = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                    temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                )
            seconds = (time.perf_counter() - started) / len(batch)
            for row, i in enumerate(batch):
                new = output[row, width:]
                eos = tokenizer.eos_token_id
                count = int((new != pad).sum()) if pad != eos else int(len(new))
                text = tokenizer.decode(new, skip_special_tokens=True)
                results[i] = Answered(first_line(text), seconds, len(encoded[i]), count)
            if on_batch:
                on_batch(len(batch))
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]
