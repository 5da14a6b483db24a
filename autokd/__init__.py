"""autokd: search students and distillation recipes for a teacher under a compute budget."""

__version__ = "0.1.0"
