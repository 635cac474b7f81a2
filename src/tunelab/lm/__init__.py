"""Causal language models (GPT-style): supervised fine-tuning with LoRA, merging, generation, chat.

from tunelab.lm.sft import SFTConfig, sft
run = sft(SFTConfig(model="smollm2", data="pairs.jsonl"))
from tunelab.lm.generate import Generator
Generator(run.path)("What is LoRA?")
"""
