"""A model's life after its first run: versions and promotion (registry), updates on new data with
replay (continual), and weight-space blending of an update with its start (blend)."""
