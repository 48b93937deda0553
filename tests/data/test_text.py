"""Text normalisation and the character tokenizer."""

from __future__ import annotations

import pytest

from asrkd.data.text import BLANK, Tokenizer, normalize_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HELLO, World!", "hello world"),
        ("  many   spaces\tand\nlines ", "many spaces and lines"),
        ("Café naïve ÉCOLE", "cafe naive ecole"),
        ("rock-and-roll", "rock and roll"),
        ("it\u2019s JOHN'S", "it's john's"),
        ("chapter 12: the end.", "chapter the end"),
        ("", ""),
        ("?!", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected
    assert normalize_text(expected) == expected  # idempotent


def test_default_vocabulary() -> None:
    tok = Tokenizer()
    assert tok.vocab_size == 29 and tok.blank_id == 0 and tok.symbols[0] == BLANK
    assert tok.symbols[1:3] == (" ", "'")


def test_encode_decode_round_trip() -> None:
    tok = Tokenizer()
    ids = tok.encode("It's a Dog-Day!")
    assert 0 not in ids
    assert tok.decode(ids) == "it's a dog day"
    assert tok.encode("abc") == [3, 4, 5]
    assert tok.decode([0, 3, 0, 4, 0]) == "ab"  # blanks ignored
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_characters_outside_a_vocabulary() -> None:
    tok = Tokenizer(symbols=(BLANK, " ", "a", "b"))
    assert tok.encode("a cab!") == [2, 1, 2, 3]  # 'c' dropped
    assert tok.oov_chars("a cab") == {"c"}


def test_json_round_trip_and_bad_vocabularies() -> None:
    tok = Tokenizer(symbols=(BLANK, "x", "y"))
    assert Tokenizer.from_json(tok.to_json()) == tok
    with pytest.raises(ValueError, match="blank"):
        Tokenizer(symbols=("a", BLANK))
    with pytest.raises(ValueError, match="duplicate"):
        Tokenizer(symbols=(BLANK, "a", "a"))
