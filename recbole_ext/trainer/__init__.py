"""Trainers: the plugin mixin every plugin model's trainer carries, and model-specific trainers."""
