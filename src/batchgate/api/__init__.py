"""HTTP API: one router per dialect over the same engine."""
