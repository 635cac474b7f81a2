"""Training-step cost of SmolLM2-135M against MiniLM in one process: the same real train texts (factbook-resources, seed 0),
mean pooling, batch 16, 256 tokens, bf16 autocast, AdamW; no scores. Prints rows/s of each and the ratio.

multilabel_dev.py's lines record each candidate's training seconds, but the MiniLM candidates ran on another CPU with one
thread and others' jobs beside them; this puts both models' cost side by side on one machine, in one run.

    flock /tmp/tunelab-bench.lock env TUNELAB_THREADS=2 python benchmarks/train_step_cost.py
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from tunelab import hardware  # noqa: E402
from tunelab.config import MultiLabelConfig  # noqa: E402
from tunelab.data.multilabel import label_vocabulary, load_multilabel_splits, multi_hot  # noqa: E402
from tunelab.models.catalogue import resolve_model  # noqa: E402
from tunelab.models.pooling import new_classifier  # noqa: E402

threads = hardware.set_threads(int(os.environ.get("TUNELAB_THREADS", "2")))
splits, _ = load_multilabel_splits(
    MultiLabelConfig(model="minilm", data="factbook-resources", label_col="labels", seed=0, eval_fraction=0.15, test_fraction=0.2)
)
labels = label_vocabulary([splits["train"]])
texts = splits["train"]["text"].tolist()[:48]
targets = torch.tensor(multi_hot(splits["train"]["labels"][:48], labels), dtype=torch.float32)


def rows_per_second(name: str) -> dict:
    """Three training steps of 16 rows; the first (warm-up) is left out of the rate."""
    folder = resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = new_classifier(folder, "mean", labels)
    model.config.problem_type = "multi_label_classification"
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    steps = []
    for start in (0, 16, 32):
        batch = tokenizer(texts[start : start + 16], truncation=True, max_length=256, padding=True, return_tensors="pt")
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch, labels=targets[start : start + 16]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps.append(time.perf_counter() - began)
    return {
        "step_seconds": [round(s, 2) for s in steps],
        "rows_per_second": 16 / (sum(steps[1:]) / 2),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


result = {name: rows_per_second(name) for name in ("minilm", "smollm2")}
result["smollm2_seconds_per_row_over_minilm"] = result["minilm"]["rows_per_second"] / result["smollm2"]["rows_per_second"]
result["threads"] = threads
result["environment"] = hardware.environment(hardware.resolve_precision("auto"))
print(json.dumps(result, indent=2))
