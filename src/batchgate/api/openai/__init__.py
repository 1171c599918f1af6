"""OpenAI's Files and Batches dialect."""
