"""What differs between the dialects once a batch exists, as data the engine reads (never a branch
on the dialect's name inside the engine)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DialectRules:
    # xAI has no `failed` batch: a batch whose input fails validation is cancelled, saying why.
    invalid_input_cancels: bool = False


RULES = {"openai": DialectRules(), "xai": DialectRules(invalid_input_cancels=True)}


def rules_for(dialect: str) -> DialectRules:
    return RULES.get(dialect, RULES["openai"])
