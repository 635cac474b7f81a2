"""The side-by-side comparison of hallucination-reduction strategies (`tunelab strategies`)."""

from tunelab.strategies.config import StrategiesConfig
from tunelab.strategies.run import STRATEGIES, run_strategies

__all__ = ["STRATEGIES", "StrategiesConfig", "run_strategies"]
