"""Text normalisation, the character tokenizer and BPE word pieces."""

from __future__ import annotations

import pytest

from asrkd.data.text import (
    BLANK,
    BPE_BASE_SYMBOLS,
    WORD_START,
    BpeTokenizer,
    Tokenizer,
    apply_merges,
    normalize_text,
    train_bpe,
)


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


def test_bpe_merges_by_hand() -> None:
    # "low" x5, "lower" x2, "newest" x6, "widest" x3 (the Sennrich et al. example, with ▁).
    texts = ["low"] * 5 + ["lower"] * 2 + ["newest"] * 6 + ["widest"] * 3
    tok = train_bpe(texts, len(BPE_BASE_SYMBOLS) + 3)
    # e+s and s+t both occur 9 times: ties go to the pair that sorts first. Then es+t (9), then
    # three pairs of 7 (▁+l, l+o, o+w), of which l+o sorts first ("l" < "▁").
    assert tok.merges == (("e", "s"), ("es", "t"), ("l", "o"))
    assert tok.symbols[len(BPE_BASE_SYMBOLS) :] == ("es", "est", "lo")
    assert [tok.symbols[i] for i in tok.encode("lowest")] == ["▁", "lo", "w", "est"]
    assert apply_merges(list("xestx"), {("e", "s"): 0, ("es", "t"): 1}) == ["x", "est", "x"]


def test_bpe_round_trip_on_unseen_words_and_json() -> None:
    texts = ["the cat sat on the mat", "the dog ate the cat's food", "a cat and a dog"] * 3
    tok = train_bpe(texts, 60)
    assert isinstance(tok, BpeTokenizer) and tok.blank_id == 0
    assert 29 < tok.vocab_size <= 60
    for text in [*texts, "zebra quickly jumped", "it's"]:
        ids = tok.encode(text)
        assert 0 not in ids and tok.decode(ids) == normalize_text(text)
    assert len(tok.encode("the cat")) < len(Tokenizer().encode("the cat"))  # merges were used
    assert tok.decode([0, *tok.encode("the"), 0, 0]) == "the"
    back = Tokenizer.from_json(tok.to_json())
    assert back == tok and isinstance(back, BpeTokenizer)
    assert back.encode("the dog") == tok.encode("the dog")
    assert train_bpe(list(reversed(texts)), 60) == tok  # deterministic, order-free
    assert not isinstance(Tokenizer.from_json(Tokenizer().to_json()), BpeTokenizer)


def test_bpe_stops_when_no_pair_repeats_and_rejects_bad_vocabularies() -> None:
    tok = train_bpe(["ab"], 100)  # "▁ab" occurs once: no pair occurs twice
    assert tok.merges == () and tok.symbols == BPE_BASE_SYMBOLS
    with pytest.raises(ValueError, match="at least"):
        train_bpe(["ab"], 10)
    with pytest.raises(ValueError, match="outside"):
        BpeTokenizer(symbols=BPE_BASE_SYMBOLS, merges=((WORD_START, "a"),))
    with pytest.raises(ValueError, match="base symbols"):
        BpeTokenizer(symbols=(BLANK, "a"))


def test_sentencepiece_pieces_blank_first_round_trip_and_json() -> None:
    """model.tokenizer=bpe trains sentencepiece: <blk> is id 0 in its own model (as icefall's
    bpe.model) and asrkd's BLANK in the vocabulary, unseen words stay spellable, and the JSON
    carries the model so it rebuilds alone, deterministically."""
    from asrkd.data.text import SentencePieceTokenizer, train_sentencepiece

    texts = ["the cat sat on the mat", "the hat that the cat had", "a mat and a hat"] * 5
    tok = train_sentencepiece(texts, 40)
    assert isinstance(tok, SentencePieceTokenizer) and isinstance(tok, BpeTokenizer)
    assert tok.symbols[0] == BLANK and tok.blank_id == 0 and tok.vocab_size <= 40
    assert "\u2581the" in tok.symbols  # a frequent word is one piece
    ids = tok.encode("The Cat, sat!")
    assert 0 not in ids and tok.decode(ids) == "the cat sat"
    assert tok.decode(tok.encode("that hat")) == "that hat"
    back = Tokenizer.from_json(tok.to_json())
    assert back == tok and isinstance(back, SentencePieceTokenizer)
    assert train_sentencepiece(texts, 40) == tok
    with pytest.raises(ValueError, match="sentencepiece"):
        SentencePieceTokenizer(symbols=(BLANK, "a"), model=tok.model)
