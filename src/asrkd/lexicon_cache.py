"""Built word LMs kept on disk (`eval.lm_cache`): the lexicon decoder's LM as the ARPA text the
C++ search reads, under a key of everything that built it.

Building the real-speech recipe's trigram LM (its transcripts, wordfreq's 50k words, CMU Sphinx's
pairs and triples) takes 7-13 s and peaks ~860 MB above what the decoder keeps (its Python tables,
then the ARPA text written from them; docs/benchmarks.md), and every evaluated model, its timing
and its memory probe built it again. With a cache folder the first build writes `<key>.arpa`
(write_arpa's text) and `<key>.json` (what built it); every later decoder of the same LM, in any
process, hands that file to KenLM as an exported file's LM is handed (LexiconDecoder's `arpa`):
no Python tables, and the same search to the bit, since the C++ search read the same text
written to a temporary file before.

The key is a SHA-256 of: the config's LM fields (vocabulary, wordfreq_weight, bigrams, lm_order;
an `arpa` file's resolved path, size and modification time), the tokenizer's symbols, the
transcripts' own LM where the vocabulary uses them (their words and word pairs, so another
training manifest or speaker split is another key), the versions of the packages whose word lists
it reads, and the source of the asrkd modules that build and write it: a change to any of them
gives another key, never a stale LM. Only the C++ engine (character tokenizers) reads the cache;
the Python search works on the LM's tables, which the ARPA text holds to 7 significant digits.
Entries are deleted only by `asrkd cache prune` (asrkd.caches; ~100 MB each for that trigram,
~50 MB for its bigram), which reads an entry's last use from its `.json`'s modification time.
Writes are atomic (an entry counts once its `.json` is written, after its `.arpa`; a killed
build's temporary file is deleted by the next build), and a build holds a lock on its key, so a
second process asking for the same LM waits for the first instead of building it again.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

from asrkd.config import EvalConfig, ExportConfig, parse_vocabulary, to_dict, transcript_order
from asrkd.data.text import BpeTokenizer, Tokenizer
from asrkd.files import atomic_write, code_fingerprint, mark_used, remove_stale_temporaries
from asrkd.lexicon import ArpaFile, WordLM, config_lm

log = logging.getLogger(__name__)

# the modules whose code decides an LM's ARPA text
LM_SOURCES = (
    "lexicon/lm.py",
    "lexicon/sources.py",
    "lexicon_flashlight.py",
    "sphinx_lm.py",
    "data/text.py",
)
# the packages whose shipped word lists an LM may read (wordfreq, books' pairs, Sphinx's LM)
LM_PACKAGES = ("wordfreq", "symspellpy", "pocketsphinx")
LM_FIELDS = ("vocabulary", "wordfreq_weight", "bigrams", "lm_order", "arpa")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def reads_cache(cfg: EvalConfig | ExportConfig, tokenizer: Tokenizer) -> bool:
    """Whether cfg's lexicon LM comes through the cache: a folder named, and the C++ search
    (character tokenizers) decoding."""
    return (
        bool(cfg.lm_cache)
        and cfg.lexicon_engine == "flashlight"
        and not isinstance(tokenizer, BpeTokenizer)
    )


def lm_inputs(
    cfg: EvalConfig | ExportConfig, tokenizer: Tokenizer, train_lm: Callable[[int], WordLM]
) -> dict:
    """Everything that decides the LM config_lm builds for cfg (module docstring), as JSON-able
    values; train_lm(order) is called only where the vocabulary uses the transcripts."""
    fields = to_dict(cfg)
    inputs: dict = {k: fields[k] for k in LM_FIELDS}
    if cfg.arpa:
        path = Path(cfg.arpa).resolve()
        stat = path.stat()
        inputs["arpa"] = [str(path), stat.st_size, stat.st_mtime_ns]
    else:
        use_train, n_wordfreq = parse_vocabulary(cfg.vocabulary)
        if use_train or not n_wordfreq:  # vocabulary_lm calls train_lm exactly then
            inputs["transcripts"] = train_lm(transcript_order(cfg.lm_order, cfg.bigrams)).to_json()
    inputs["symbols"] = list(tokenizer.symbols)
    inputs["packages"] = {p: _version(p) for p in LM_PACKAGES}
    inputs["code"] = code_fingerprint(LM_SOURCES)
    return inputs


def cached_arpa(
    folder: str | Path,
    cfg: EvalConfig | ExportConfig,
    tokenizer: Tokenizer,
    train_lm: Callable[[int], WordLM],
) -> ArpaFile:
    """The ARPA file of the LM config_lm(cfg, tokenizer, train_lm) builds, from `folder`, built
    and written there first where it is not yet (module docstring)."""
    train_lm = functools.cache(train_lm)  # the key and the build need the same transcripts
    inputs = lm_inputs(cfg, tokenizer, train_lm)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arpa, about = folder / f"{key}.arpa", folder / f"{key}.json"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        built = not (about.is_file() and arpa.is_file())
        if built:
            remove_stale_temporaries(folder)  # a killed build's half-written text
            _build(cfg, tokenizer, train_lm, inputs, arpa, about)  # logs what it built
    order = int(json.loads(about.read_text())["order"])
    if not built:
        log.info("lexicon LM from the cache: %s", arpa)
        mark_used(about)
    return ArpaFile(arpa, order)


def _build(cfg, tokenizer, train_lm, inputs: dict, arpa: Path, about: Path) -> None:
    """Build cfg's LM and write its ARPA text to `arpa`, then what built it to `about` (the
    entry counts as written once `about` is there)."""
    from asrkd.lexicon_flashlight import write_arpa

    start = time.perf_counter()
    lm = config_lm(cfg, tokenizer, train_lm)
    order = lm.order
    atomic_write(arpa, lambda tmp: write_arpa(lm, tmp))
    seconds = time.perf_counter() - start
    # what a reader can check by eye (the transcripts and symbols are in the key's digest only)
    inputs = {k: v for k, v in inputs.items() if k not in ("transcripts", "symbols")}
    record = {"order": order, "build_s": round(seconds, 2), "inputs": inputs}
    atomic_write(about, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    log.info("lexicon LM built in %.1f s and cached: %s", seconds, arpa)


def cached_entries(folder: str | Path) -> Iterator[tuple[dict, Path]]:
    """(record, ARPA file) of every entry written in `folder`: the record is what _build wrote
    beside it ({"order", "build_s", "inputs"}, the inputs without transcripts and symbols)."""
    for about in sorted(Path(folder).glob("*.json")):
        arpa = about.with_suffix(".arpa")
        if arpa.is_file():
            yield json.loads(about.read_text()), arpa
