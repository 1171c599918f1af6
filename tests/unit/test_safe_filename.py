"""api/openai/files.py: the names uploads are stored under."""

from __future__ import annotations

import pytest

from batchgate.api.openai.files import safe_filename


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("batch.jsonl", "batch.jsonl"),
        ("../../etc/passwd", "passwd"),
        ("/abs/path/in.jsonl", "in.jsonl"),
        ("C:\\Users\\me\\in.jsonl", "in.jsonl"),
        ("dir/", "upload"),
        ("..", "upload"),
        (".", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("  spaced name.jsonl  ", "spaced name.jsonl"),
        ("evil\x00name\r\n.jsonl", "evilname.jsonl"),
        ("tab\there\x7f.jsonl", "tabhere.jsonl"),
        ("données.jsonl", "données.jsonl"),
    ],
)
def test_safe_filename(raw: str | None, safe: str) -> None:
    assert safe_filename(raw) == safe


def test_safe_filename_is_at_most_255_characters() -> None:
    assert safe_filename("a" * 1000 + ".jsonl") == "a" * 255
