"""Data: loading sources, built-in datasets, splits, profiles and tokenization."""

from tunelab.data.builtin import BUILTIN
from tunelab.data.load import load_source
from tunelab.data.profile import profile_splits
from tunelab.data.split import load_splits, make_splits

__all__ = ["BUILTIN", "load_source", "load_splits", "make_splits", "profile_splits"]
