"""Does the model generalise? Compare eval with training loss and accuracy from history.jsonl.

The guide's rule of thumb: an eval loss close to the training loss shows the model generalises.
We flag the usual signs of over-fitting: eval loss well above training loss, training accuracy
well above eval accuracy, and eval loss rising again after its best epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# A gap is flagged only when it is large both relatively and absolutely, so tiny losses near 0
# (where any ratio looks huge) and noisy small runs do not raise false alarms.
LOSS_RATIO = 1.5
LOSS_GAP = 0.1
ACCURACY_GAP = 0.10
EVAL_LOSS_RISE = 0.10  # eval loss at the end, relative to its best epoch


def generalisation_check(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A verdict ('ok', 'overfitting' or 'unknown'), the numbers it rests on, and the reasons."""
    evals = [h for h in history if h.get("type") == "eval" and _num(h.get("eval_loss")) is not None]
    trains = [h for h in history if h.get("type") == "train" and _num(h.get("loss")) is not None]
    out: dict[str, Any] = {"verdict": "unknown", "reasons": []}
    if not evals or not trains:
        out["reasons"].append("history.jsonl has no training and eval losses to compare")
        return out

    last_eval = evals[-1]
    epoch = last_eval.get("epoch")
    # The training loss of the last epoch: the mean of its logged steps, not one noisy step.
    prev_epoch = evals[-2].get("epoch") if len(evals) > 1 else None
    last_epoch_losses = [
        h["loss"] for h in trains if (epoch is None or (h.get("epoch") or 0) <= epoch) and (prev_epoch is None or (h.get("epoch") or 0) > prev_epoch)
    ] or [trains[-1]["loss"]]
    train_loss = float(sum(last_epoch_losses) / len(last_epoch_losses))
    eval_loss = float(last_eval["eval_loss"])
    train_acc = _num(last_eval.get("train_accuracy"))
    if train_acc is None:
        train_acc = next((_num(h.get("train_accuracy")) for h in reversed(trains) if _num(h.get("train_accuracy")) is not None), None)
    eval_acc = _num(last_eval.get("eval_accuracy"))

    out.update(
        epoch=epoch,
        train_loss=train_loss,
        eval_loss=eval_loss,
        loss_gap=eval_loss - train_loss,
        loss_ratio=eval_loss / train_loss if train_loss > 0 else None,
        train_accuracy=train_acc,
        eval_accuracy=eval_acc,
        accuracy_gap=(train_acc - eval_acc) if train_acc is not None and eval_acc is not None else None,
    )
    reasons: list[str] = out["reasons"]
    if eval_loss - train_loss > LOSS_GAP and (train_loss <= 0 or eval_loss / train_loss > LOSS_RATIO):
        reasons.append(f"eval loss {eval_loss:.3f} is {eval_loss / max(train_loss, 1e-12):.1f}x the training loss {train_loss:.3f}")
    if out["accuracy_gap"] is not None and out["accuracy_gap"] > ACCURACY_GAP:
        reasons.append(f"training accuracy {train_acc:.1%} is {out['accuracy_gap']:.1%} above eval accuracy {eval_acc:.1%}")
    best = min(evals, key=lambda h: h["eval_loss"])
    if best is not last_eval and eval_loss > best["eval_loss"] * (1 + EVAL_LOSS_RISE):
        reasons.append(
            f"eval loss rose from {best['eval_loss']:.3f} (epoch {best.get('epoch')}) to {eval_loss:.3f}; "
            "fewer epochs or the best checkpoint would generalise better"
        )
    out["verdict"] = "overfitting" if reasons else "ok"
    if not reasons:
        reasons.append(f"eval loss {eval_loss:.3f} is close to the training loss {train_loss:.3f}")
    return out


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
