"""Offline model catalogue and model loading shared by every feature."""
