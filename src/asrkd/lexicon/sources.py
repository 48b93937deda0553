"""Where the lexicon's word LM comes from (asrkd.lexicon's docstring says how each is
built): transcripts, wordfreq, English books' pairs, CMU Sphinx's LM, ARPA files, the
config's lexicon fields, a checkpoint's training transcripts, an exported file's lexicon;
and the LM as ARPA text (ArpaSource, ArpaFile)."""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import io
import math
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asrkd.config import (
    ConfigError,
    EvalConfig,
    ExportConfig,
    parse_bigrams,
    parse_vocabulary,
    transcript_order,
)
from asrkd.data.dataset import cut_text, load_cuts, split_by_speaker
from asrkd.data.text import WORD_START, Tokenizer, normalize_text
from asrkd.data.validate import DataError
from asrkd.lexicon.lm import SENTENCE_START, WordLM, WordTriples, _first_ids, _word_ids
from asrkd.sphinx_lm import is_sphinx_lm, read_sphinx_lm

if TYPE_CHECKING:
    from asrkd.lexicon.search import LexiconDecoder

BOOKS_PAIRS = "symspellpy/frequency_bigramdictionary_en_243_342.txt"  # in symspellpy's wheel
BOOKS_MASS = 0.9  # m: the listed pairs' share of P(. | v) (dev: 0.9-0.97 > 0.7 > 0.5)


def clear_caches() -> None:
    """Forget the English books' pairs, the ARPA files and wordfreq's word lists read so far
    (each is read once per process, for the next decoder built; a decoder built keeps what it
    uses): ~45 MB after building the real-speech recipe's decoder."""
    _books_pairs.cache_clear()
    _sphinx_pairs.cache_clear()
    _sphinx_triples.cache_clear()
    _read_arpa.cache_clear()
    wordfreq = sys.modules.get("wordfreq")
    for name in ("get_frequency_dict", "get_frequency_list", "top_n_list"):
        cached = getattr(wordfreq, name, None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def _single_word(raw: str, chars: set[str]) -> str:
    """`raw` normalised like transcripts if that is one word spelt with `chars`, else ''."""
    word = normalize_text(raw)
    return word if word and " " not in word and set(word) <= chars else ""


def _letters(tokenizer: Tokenizer) -> set[str]:
    """The characters the tokenizer's symbols spell words with."""
    return {c for s in tokenizer.symbols[1:] for c in s} - {" ", WORD_START}


def wordfreq_lm(n_words: int, tokenizer: Tokenizer) -> WordLM:
    """The n_words most frequent English words of the `wordfreq` package, normalised like
    transcripts (normalize_text), kept when single words spelt with the tokenizer's characters;
    frequencies of words that normalise alike are summed, then renormalised."""
    try:
        import wordfreq
    except ImportError as err:
        raise ImportError(
            "a vocabulary with wordfreq needs the wordfreq package: pip install 'asrkd[lexicon]'"
        ) from err
    chars = _letters(tokenizer)
    freqs = wordfreq.get_frequency_dict("en")
    counts: dict[str, float] = {}
    for raw in wordfreq.top_n_list("en", n_words):
        if word := _single_word(raw, chars):
            counts[word] = counts.get(word, 0.0) + freqs[raw]
    if not counts:
        raise ValueError("no wordfreq word is spellable with this tokenizer")
    return WordLM.from_counts(counts)


def _shipped_file(package: str, relative: str, source: str, extra: str) -> Path:
    """The file at `relative` inside the installed `package` (a data file it ships, only read);
    ImportError naming the bigram `source` and asrkd's `extra` when the package or the file is
    not there."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(package)
    except PackageNotFoundError as err:
        raise ImportError(
            f"bigrams with {source} need the {package} package: pip install 'asrkd[{extra}]'"
        ) from err
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise ImportError(f"{package} {dist.version} does not ship {relative}")
    return path


@functools.cache
def _books_pairs() -> tuple[tuple[str, str, float], ...]:
    """(previous word, word, count) of the English books' word pairs symspellpy ships
    (BOOKS_PAIRS), normalised like transcripts; read once per process (every evaluated model
    and its timing build the same LM)."""
    path = _shipped_file("symspellpy", BOOKS_PAIRS, "books", "lexicon")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            *words, count = line.split()
            if len(words) == 2:
                pairs.append((normalize_text(words[0]), normalize_text(words[1]), float(count)))
    return tuple(pairs)


SPHINX_LM = "pocketsphinx/model/en-us/en-us.lm.bin"  # in pocketsphinx's wheel


@functools.cache
def _sphinx_pairs() -> tuple[tuple[str, str, float], ...]:
    """sphinx_pairs of CMU Sphinx's US English LM as pocketsphinx ships it (SPHINX_LM); read
    once per process."""
    return sphinx_pairs(_shipped_file("pocketsphinx", SPHINX_LM, "sphinx", "sphinx"))


@functools.cache
def _sphinx_triples() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """sphinx_triples of CMU Sphinx's US English LM as pocketsphinx ships it (SPHINX_LM); read
    once per process."""
    return sphinx_triples(_shipped_file("pocketsphinx", SPHINX_LM, "sphinx", "sphinx"))


def _sphinx_names(words: Iterable[str]) -> list[str]:
    """A Sphinx LM's words normalised like transcripts: <s> as SENTENCE_START, '' for other
    <...> tokens and for what normalises to more than one word."""
    names = []
    for raw in words:
        word = "" if raw.startswith("<") else normalize_text(raw)
        names.append(SENTENCE_START if raw == "<s>" else "" if " " in word else word)
    return names


def sphinx_triples(path: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(names, ids, P) of a Sphinx LM file's word triples: names, its words normalised
    (_sphinx_names); ids (R, 3) (u, v, w) into names, with u and v each the first id of its
    name (a context spelt two ways keeps its first spelling's triples); P (R,) P(w | u, v).
    A file of order 2 has none (R = 0)."""
    lm = read_sphinx_lm(path)
    names = _sphinx_names(lm.words)
    if lm.order < 3:
        return tuple(names), np.zeros((0, 3), dtype=np.int64), np.zeros(0)
    first = _first_ids(names)
    is_first = np.array([bool(n) and first[n] == i for i, n in enumerate(names)])
    grams = lm.higher[1]
    ids = grams.ids
    keep = is_first[ids[:, 0]] & is_first[ids[:, 1]] & np.array([bool(n) for n in names])[ids[:, 2]]
    return tuple(names), ids[keep].astype(np.int64), 10.0 ** grams.logprob[keep]


def sphinx_trigram(lm: WordLM) -> WordLM:
    """The bigram `lm` with the word triples of CMU Sphinx's US English LM (_sphinx_triples)
    whose three words are in lm's vocabulary (the first may be the sentence start): a listed
    triple keeps its P(w | u, v), the mass left in its context (1 - the listed triples' P in
    the vocabulary) goes to the bigram:
    P(w | u, v) = P_sphinx(w | u, v) [listed] + (1 - S_uv) P_lm(w | v)."""
    if lm.triples is not None:
        raise ValueError("this LM has its triples already")
    names, ids, probs = _sphinx_triples()
    words = tuple(lm.log_probs)
    index = _word_ids(words)
    to_vocabulary = np.array([index.get(n, -1) for n in names], dtype=np.int64)
    mapped = to_vocabulary[ids] if len(ids) else np.zeros((0, 3), dtype=np.int64)
    word_ids = mapped[:, 1:]
    keep = (mapped[:, 0] >= 0) & (word_ids >= 0).all(axis=1) & (word_ids < len(words)).all(axis=1)
    triples = WordTriples.from_arrays(words, mapped[keep], probs[keep])
    return WordLM(lm.log_probs, lm.contexts, triples)


def sphinx_pairs(path: Path) -> tuple[tuple[str, str, float], ...]:
    """(previous word, word, P(word | previous)) of a Sphinx LM file's word pairs, words
    normalised like transcripts, <s> as SENTENCE_START, other <...> tokens left out; a context
    spelt two ways keeps its first spelling's pairs."""
    lm = read_sphinx_lm(path)
    names = _sphinx_names(lm.words)
    first = _first_ids(names)
    return tuple(
        (names[v], names[w], 10.0**p)
        for (v, w), p in zip(lm.pairs.tolist(), lm.pair_logprob.tolist())
        if names[w] and names[v] and first[names[v]] == v
    )


def sphinx_bigram(unigram: WordLM) -> WordLM:
    """`unigram` with the bigram contexts of CMU Sphinx's US English LM (_sphinx_pairs),
    restricted to the unigram's vocabulary: a listed pair keeps its P(w | v), the mass left
    (1 - the listed pairs' P in the vocabulary) goes to the unigram:
    P(w | v) = P_sphinx(w | v) [listed] + (1 - S_v) P(w), S_v = sum of the listed P(. | v)."""
    after: dict[str, dict[str, float]] = {}
    for prev, word, p in _sphinx_pairs():
        if word in unigram.log_probs and (prev == SENTENCE_START or prev in unigram.log_probs):
            seen = after.setdefault(prev, {})
            seen[word] = seen.get(word, 0.0) + p
    contexts = {}
    for prev, seen in sorted(after.items()):
        rest = 1.0 - sum(seen.values())
        if rest <= 1e-9:  # every word it allows is listed: keep a sliver for the others
            seen = {w: p * (1 - 1e-6) / (1 - rest) for w, p in seen.items()}
            rest = 1e-6
        contexts[prev] = (math.log(rest), {w: float(f"{p:.6g}") for w, p in sorted(seen.items())})
    return WordLM(unigram.log_probs, contexts)


def books_bigram(unigram: WordLM) -> WordLM:
    """`unigram` with the bigram contexts of the English books' word pairs that symspellpy ships
    (BOOKS_PAIRS; module docstring), restricted to the unigram's vocabulary."""
    pairs: dict[str, dict[str, float]] = {}
    for prev, word, count in _books_pairs():
        if prev in unigram.log_probs and word in unigram.log_probs:
            after = pairs.setdefault(prev, {})
            after[word] = after.get(word, 0.0) + count
    contexts = {}
    for prev, after in sorted(pairs.items()):
        total = sum(after.values())
        # 6 significant digits: the pairs are most of an exported file's lexicon (JSON), and
        # their counts are not known better than that
        seen = {w: float(f"{BOOKS_MASS * c / total:.6g}") for w, c in sorted(after.items())}
        contexts[prev] = (math.log(1 - BOOKS_MASS), seen)
    return WordLM(unigram.log_probs, contexts)


def arpa_lm(path: str | Path, order: int, tokenizer: Tokenizer) -> WordLM:
    """The word LM of an ARPA file (.arpa, or gzipped .arpa.gz), up to `order` (1, 2 or 3).

    Words are normalised like transcripts (normalize_text); <s> is SENTENCE_START; </s>, <unk>
    and words that are not one word spelt with the tokenizer's characters are left out. Spellings
    that normalise alike ("The", "the") are one word: their 1-gram probabilities are summed, and
    as a context it keeps the back-off and the 2-grams of its first spelling in the file only
    (summing the contexts' pairs would give P(. | v) a mass above 1). The unigram is the 1-grams'
    probabilities; the bigram puts each context's listed 2-grams over its back-off weight b(v):
    P(w | v) is the listed P_arpa(w | v), else b(v) P(w); a listed pair below b(v) P(w) (rare in
    pruned models) is read as unlisted; 3-grams alike over the bigram (_with_arpa_triples).
    Higher-order sections are not read. A file that cannot be read, a malformed line, or an
    lm_order of n without n-grams is a DataError naming the file.
    Read once per process while the file stays the same (every evaluated model builds its LM)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such ARPA file (eval.arpa / arpa)")
    stat = path.stat()
    return _read_arpa(path, stat.st_mtime_ns, stat.st_size, order, frozenset(_letters(tokenizer)))


@functools.lru_cache(maxsize=4)
def _read_arpa(
    path: Path, mtime_ns: int, size: int, order: int, chars: frozenset[str]
) -> WordLM:  # mtime and size: a file changed behind the same path is read again
    return _parse_arpa(path, order, chars)


def _parse_arpa(path: Path, order: int, chars: frozenset[str]) -> WordLM:
    """arpa_lm's reading, uncached: an ARPA text file, or a Sphinx binary one (asrkd.sphinx_lm)."""
    if is_sphinx_lm(path):
        entries = read_sphinx_lm(path).entries(order)
    else:
        entries = _arpa_entries(path, order)
    return _lm_of_entries(path, entries, order, chars)


def _arpa_entries(path: Path, order: int) -> Iterator[tuple[int, tuple[str, ...], float, float]]:
    """(n, words, log10 P, log10 back-off) of an ARPA text file's n-grams up to `order`; a
    malformed line or an unreadable file is a DataError naming it."""
    section = 0
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line or line == "\\data\\" or line.startswith("ngram "):
                    continue
                if line == "\\end\\":
                    break
                if line.startswith("\\") and line.endswith("-grams:"):
                    n = line[1:].split("-")[0]
                    if not n.isdigit() or int(n) == 0:
                        raise DataError(f"{path}:{number}: unreadable ARPA section {line!r}")
                    section = int(n)
                    if section > order:  # sections come in increasing order
                        break
                    continue
                if section == 0:
                    continue
                fields = line.split()
                try:
                    if len(fields) not in (section + 1, section + 2):
                        raise ValueError(f"{section}-gram line with {len(fields)} fields")
                    log10_p = float(fields[0])
                    bow = float(fields[section + 1]) if len(fields) == section + 2 else 0.0
                except ValueError as err:
                    raise DataError(f"{path}:{number}: malformed ARPA line ({err})") from err
                yield section, tuple(fields[1 : section + 1]), log10_p, bow
    except (UnicodeDecodeError, OSError, EOFError) as err:  # binary, not gzip, truncated gzip
        raise DataError(f"{path}: not a readable ARPA text file ({err})") from err


def _lm_of_entries(
    path: Path,
    entries: Iterable[tuple[int, tuple[str, ...], float, float]],
    order: int,
    chars: frozenset[str],
) -> WordLM:
    """arpa_lm's WordLM of an LM file's (n, words, log10 P, log10 back-off) entries."""
    ln10 = math.log(10.0)
    unigram: dict[str, float] = {}  # word -> P(word), summed over spellings
    backoff: dict[str, tuple[float, str]] = {}  # context -> (ln b(v), the spelling it came from)
    pairs: dict[tuple[str, str], float] = {}  # (v, w) -> P(w | v)
    names: dict[str, str] = {}  # the file's spelling -> normalised word (or "" when left out)

    def word(raw: str) -> str:
        if raw not in names:
            left_out = raw in ("</s>", "<unk>", "<UNK>")
            names[raw] = (
                raw if raw == SENTENCE_START else "" if left_out else _single_word(raw, chars)
            )
        return names[raw]

    pair_backoff: dict[tuple[str, str], float] = {}  # (u, v) -> ln b(u v)
    triples: dict[tuple[str, str, str], float] = {}  # (u, v, w) -> P(w | u, v)

    def first(words: list[str], raws: tuple[str, ...]) -> bool:  # contexts: first spellings
        return all(backoff.get(w, (0, ""))[1] == r for w, r in zip(words, raws))

    found = set()
    for section, raws, log10_p, bow in entries:
        words = [word(w) for w in raws]
        found.add(section)
        if section == 1 and words[0]:
            backoff.setdefault(words[0], (bow * ln10, raws[0]))
            if words[0] != SENTENCE_START:
                unigram[words[0]] = unigram.get(words[0], 0.0) + 10.0**log10_p
        elif section == 2 and all(words) and first(words[:1], raws[:1]):
            key = (words[0], words[1])  # target spellings that merge: probabilities add
            pairs[key] = pairs.get(key, 0.0) + 10.0**log10_p
            if bow and first(words, raws):
                pair_backoff.setdefault(key, bow * ln10)
        elif section == 3 and all(words) and first(words[:2], raws[:2]):
            key = (words[0], words[1], words[2])
            triples[key] = triples.get(key, 0.0) + 10.0**log10_p
    if not unigram:
        raise DataError(f"{path}: no 1-gram spellable with the tokenizer's characters")
    for n in range(2, order + 1):
        if n not in found:
            raise DataError(f"{path}: lm_order={order} but the file has no {n}-grams")
    log_probs = {w: math.log(p) for w, p in sorted(unigram.items()) if p > 0}
    contexts: dict[str, tuple[float, dict[str, float]]] = {}
    if order >= 2:  # every context the file weighs, listed pairs or not
        contexts = {v: (b, {}) for v, (b, _) in sorted(backoff.items()) if b != 0.0}
        for (prev, w), p in sorted(pairs.items()):
            if w not in log_probs:
                continue
            b = backoff[prev][0]
            rest = p - math.exp(b + log_probs[w])
            if rest > 0:
                contexts.setdefault(prev, (b, {}))[1][w] = float(f"{rest:.6g}")
    lm = WordLM(log_probs, contexts)
    return _with_arpa_triples(lm, pair_backoff, triples) if order == 3 else lm


def _with_arpa_triples(
    lm: WordLM,
    pair_backoff: Mapping[tuple[str, str], float],
    triples: Mapping[tuple[str, str, str], float],
) -> WordLM:
    """The bigram `lm` with an ARPA file's 3-grams in back-off form: P(w | u, v) is the listed
    P_arpa(w | u, v), else b(u v) P(w | v); a listed triple below b(u v) P(w | v) is read as
    unlisted (as _lm_of_entries reads pairs)."""
    words = tuple(lm.log_probs)
    index = _word_ids(words)

    def known(u: str, v: str) -> bool:
        return u in index and v in lm.log_probs

    rows, shares = [], []
    for (u, v, w), p in sorted(triples.items()):
        if known(u, v) and w in lm.log_probs:
            rest = p - math.exp(pair_backoff.get((u, v), 0.0) + lm.score(v, w))
            if rest > 0:
                rows.append((index[u], index[v], index[w]))
                shares.append(float(f"{rest:.6g}"))
    contexts = {(index[u], index[v]): b for (u, v), b in pair_backoff.items() if known(u, v)}
    ids = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return WordLM(
        lm.log_probs, lm.contexts, WordTriples.from_arrays(words, ids, np.array(shares), contexts)
    )


def vocabulary_lm(
    vocabulary: str,
    wordfreq_weight: float,
    tokenizer: Tokenizer,
    train_lm: Callable[[], WordLM],
    general: tuple[str, ...] = (),
) -> WordLM:
    """The LM a vocabulary spec names ("train", "wordfreq:N", "train+wordfreq:N"): its unigram,
    and the transcripts' bigram where train_lm() has one (train_lm() gives the transcripts' LM
    and is only called when the spec uses it); under it the general bigrams `general` names
    ("books", "sphinx"), the books' over Sphinx's where both."""
    use_train, n_wordfreq = parse_vocabulary(vocabulary)
    if not n_wordfreq:
        lm = train_lm()
    else:
        words = wordfreq_lm(n_wordfreq, tokenizer)
        lm = train_lm().mix(words, wordfreq_weight) if use_train else words
    lower = sphinx_bigram(lm) if "sphinx" in general else None
    if "books" in general:
        books = books_bigram(lm)
        lower = books if lower is None else books.over(lower)
    return lm if lower is None else lm.over(lower)


def vocabulary_label(cfg: EvalConfig | ExportConfig) -> str:
    """Where cfg's lexicon words come from, as a decoder and an exported file record it: the
    vocabulary spec, or "arpa:NAME" for an ARPA file."""
    return f"arpa:{Path(cfg.arpa).name}" if cfg.arpa else cfg.vocabulary


def config_lm(cfg: EvalConfig | ExportConfig, tokenizer: Tokenizer, train_lm) -> WordLM:
    """The word LM cfg's lexicon fields name; train_lm(order) gives the transcripts' LM of
    that order (2 where the bigram counts their pairs)."""
    if cfg.arpa:
        return arpa_lm(cfg.arpa, cfg.lm_order, tokenizer)
    order = transcript_order(cfg.lm_order, cfg.bigrams)
    general = tuple(s for s in parse_bigrams(cfg.bigrams) if s != "train")
    lm = vocabulary_lm(
        cfg.vocabulary,
        cfg.wordfreq_weight,
        tokenizer,
        lambda: train_lm(order),
        general if cfg.lm_order >= 2 else (),
    )
    return sphinx_trigram(lm) if cfg.lm_order == 3 else lm


def training_manifest(run_config: dict, model_path: str | Path) -> str:
    """The training cut manifest a checkpoint's run config names (ConfigError if none)."""
    source = run_config.get("data", {}).get("train_cuts", "")
    if not source:
        raise ConfigError(
            f"{model_path} names no training manifest: give the cut manifest whose transcripts "
            "are the lexicon's words (eval.lexicon_cuts, or lexicon_cuts for export)"
        )
    return source


def lm_from_manifest(path: str | Path, order: int = 1) -> WordLM:
    """The unigram (order 1) or bigram (2) LM of a cut manifest's transcripts."""
    return WordLM.from_texts((cut_text(c) for c in load_cuts(path)), order)


def training_lm(run_config: dict, model_path: str | Path, order: int = 1) -> WordLM:
    """The LM of the transcripts a checkpoint was trained on: its training manifest's, and where
    the run kept transcripts for only some speakers (data.labelled_fraction < 1) those speakers'
    alone, so that a student of situation (b) never decodes with the text it was denied."""
    cuts = load_cuts(training_manifest(run_config, model_path))
    fraction = float(run_config.get("data", {}).get("labelled_fraction", 1.0))
    if fraction < 1.0:
        seed = int(run_config.get("train", {}).get("seed", 0))
        cuts = split_by_speaker(cuts, fraction, seed)[0]
    return WordLM.from_texts((cut_text(c) for c in cuts), order)


def stored_lm(cfg: EvalConfig, lexicon: LexiconDecoder, model_path: str | Path) -> WordLM:
    """The word LM for cfg from the lexicon an exported file carries: as stored where the file
    was exported with cfg's vocabulary and LM order; a stored "train" unigram is mixed with
    cfg's wordfreq words (files exported before the export stored its vocabulary whole);
    anything else is a ConfigError rather than a silently different LM."""
    lm = lexicon.lm
    same_bigram = lm.order == cfg.lm_order and lexicon.bigrams == cfg.bigrams
    if lexicon.vocabulary == vocabulary_label(cfg) and same_bigram:
        return lm
    if lexicon.vocabulary == "train" and same_bigram and cfg.bigrams == "train":
        return vocabulary_lm(cfg.vocabulary, cfg.wordfreq_weight, lexicon.tokenizer, lambda: lm)
    raise ConfigError(
        f"{model_path} carries a lexicon of vocabulary {lexicon.vocabulary!r}, LM order "
        f"{lm.order}, bigrams {lexicon.bigrams!r}; eval.vocabulary={cfg.vocabulary!r}, "
        f"eval.lm_order={cfg.lm_order}, eval.bigrams={cfg.bigrams!r} asks for another: set "
        "them to the file's (eval.arpa=PATH for a vocabulary 'arpa:NAME'), or give "
        "eval.lexicon_cuts"
    )


@dataclass(frozen=True)
class ArpaSource:
    """A word LM as the ARPA text write_arpa writes, gzipped and base64-encoded: how an exported
    file carries its decoder's LM (the format KenLM, flashlight and sherpa-onnx read): 6.9 MB
    of text, 3.1 MB packed, for the real-speech recipe's 50k words and their word pairs, whose
    Python tables take ~100 MB. `order`: the LM's (1, 2 or 3)."""

    packed: str
    order: int

    @classmethod
    def from_lm(cls, lm: WordLM) -> ArpaSource:
        from asrkd.lexicon_flashlight import lm_arpa_file

        with lm_arpa_file(lm) as path:
            return cls.from_file(ArpaFile(path, lm.order))

    @classmethod
    def from_file(cls, arpa: ArpaFile) -> ArpaSource:
        packed = base64.b64encode(gzip.compress(arpa.path.read_bytes(), 6)).decode("ascii")
        return cls(packed, arpa.order)

    @contextmanager
    def file(self):
        """The ARPA text in a temporary file, removed on exit (unzipped a block at a time)."""
        with tempfile.TemporaryDirectory(prefix="asrkd-arpa-") as folder:
            path = Path(folder) / "lm.arpa"
            # in a function of its own: the unpacked gzip bytes (34 MB for the real-speech
            # recipe's trigram) are freed before the caller's KenLM reads the file
            self._unpack(path)
            yield path

    def _unpack(self, path: Path) -> None:
        try:
            raw = io.BytesIO(base64.b64decode(self.packed, validate=True))
            with gzip.GzipFile(fileobj=raw) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (binascii.Error, gzip.BadGzipFile, zlib.error, EOFError) as err:
            raise DataError(f"the packed ARPA text does not unpack ({err})") from err

    def read_lm(self, tokenizer: Tokenizer) -> WordLM:
        """The LM's Python tables (ArpaFile.read_lm of the unpacked text), not cached."""
        with self.file() as path:
            return ArpaFile(path, self.order).read_lm(tokenizer)


@dataclass(frozen=True)
class ArpaFile:
    """A word LM as an ARPA text file on disk that write_arpa wrote (asrkd.lexicon_cache's
    entries): read in place, like ArpaSource's unpacked copy. `order`: the LM's (1, 2 or 3)."""

    path: Path
    order: int

    @contextmanager
    def file(self):
        yield self.path

    def read_lm(self, tokenizer: Tokenizer) -> WordLM:
        """The LM's Python tables (arpa_lm: P to the file's 7 significant digits), not cached."""
        return _parse_arpa(self.path, self.order, frozenset(_letters(tokenizer)))
