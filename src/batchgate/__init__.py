"""batchgate: a self-hosted LLM batch gateway that executes batches itself."""

__version__ = "0.1.0"
