"""A tiny randomly initialised Llama with a byte-level BPE tokenizer and a ChatML chat template,
and small instruction data it can learn in seconds."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow", "plum": "purple", "orange": "orange"}


def qa_pairs(repeats: int = 4, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = [{"prompt": f"What colour is {thing}?", "response": f"The {thing} is {colour}."} for thing, colour in COLOURS.items()] * repeats
    rng.shuffle(rows)
    return rows


def write_tiny_llama(folder: Path, chat_template: str | None = CHATML, tie: bool = True, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [f"{r['prompt']} {r['response']} user assistant system" for r in qa_pairs(1)] + ["hello world, what is my name? count 1 2 3 4 5 6"]
    # Only the printable ASCII bytes as the alphabet: every token decodes to readable text on its own,
    # so a random model's output streams in pieces (lone UTF-8 fragments would be held back).
    corpus.append(string.printable)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=256)
    if chat_template:
        tokenizer.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        initializer_range=0.3,  # large enough embeddings that LoRA on the inner layers can move the logits
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
