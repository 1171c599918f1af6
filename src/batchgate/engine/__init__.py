"""The batch engine: validation, scheduling, upstream calls, results and the batch lifecycle."""
