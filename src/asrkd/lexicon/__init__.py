"""Lexicon-constrained CTC prefix beam search with a unigram, bigram or trigram word LM.

Greedy CTC decoding spells freely, so a model that gets most letters right still misspells most
words. This decoder only lets hypotheses spell words of a closed vocabulary and scores each
completed word with `lm_weight * log P(word | previous word) + word_bonus`. A unigram model is
exact for the embedded corpus, whose words are drawn independently; on real text it is the weakest
useful LM. Words outside the vocabulary cannot be recognised (their share is the OOV rate, which
`evaluate` reports).

Bigram (`lm_order` 2, in `eval` and `export`), from the word pairs `bigrams` names:
- "train": word pairs counted in the "train" transcripts (the sentence start counts as the context
  "<s>"), Witten-Bell interpolated with the unigram of the whole vocabulary:
  P(w | v) = λ_v P_ML(w | v) + (1 - λ_v) P(w), λ_v = c(v) / (c(v) + N1+(v)), with N1+(v) the number
  of different words seen after v; a context never seen falls back to P(w).
- "books": the 242k most frequent English word pairs of Google Books with their counts, as the
  `symspellpy` package ships them (frequency_bigramdictionary_en_243_342.txt, MIT), kept where
  both words are in the vocabulary: P(w | v) = m P_list(w | v) + (1 - m) P(w), with P_list the
  count of (v, w) relative to the listed pairs after v and m = BOOKS_MASS. The list is cut at a
  count, so Witten-Bell's λ_v (which trusts large counts fully) would leave almost nothing for
  the pairs it lacks; a fixed share does not (m chosen on dev speakers, docs/benchmarks.md).
- "sphinx": the word pairs of CMU Sphinx's US English LM as pocketsphinx ships it (SPHINX_LM,
  read by asrkd.sphinx_lm: 2.05 M pairs, 1.94 M of them within train+wordfreq:50000), kept where
  both words are in the vocabulary: P(w | v) = P_sphinx(w | v) for a listed pair, plus
  (1 - S_v) P(w) for every word, S_v the listed pairs' mass (sphinx_bigram).
- Sources joined by "+" in that order ("train+books", "train+sphinx", "train+books+sphinx"): each
  interpolated over the next instead of over the unigram (WordLM.over): in-domain pairs first,
  then general English pairs, then P(w).
Trigram (`lm_order` 3): the word triples of CMU Sphinx's US English LM (1.67 M; 1.62 M within
train+wordfreq:50000) over the bigram above, which must include "sphinx": a listed triple keeps
its P(w | u, v), the rest of the context's mass goes to the bigram,
P(w | u, v) = P_sphinx(w | u, v) [listed] + (1 - S_uv) P(w | v) (sphinx_trigram; the triples are
numpy arrays, WordTriples). An ARPA file's 3-grams are read alike (arpa_lm).
The look-ahead inside a word stays the unigram's (the usual approximation).

Vocabulary (`eval.vocabulary`, `export`'s `vocabulary`): "train", the words of a transcript
manifest (usually the training data's) with their relative frequencies; "wordfreq:N", the N most
frequent English words of the `wordfreq` package (general text: subtitles, books, web, ...) with
its frequencies renormalised over the words kept; "train+wordfreq:N", both, by linear
interpolation P(w) = (1 - λ) P_train(w) + λ P_wordfreq(w), λ = `wordfreq_weight`: a word of either
list keeps a non-zero probability, and the in-domain counts still lift the corpus's own words.

An ARPA file (`arpa`: KenLM's lmplz, SRILM, the LibriSpeech LMs) replaces vocabulary and
bigrams: its 1-grams are the words and the unigram, its 2-grams the bigram in back-off form
(arpa_lm), for users who have an LM of their own domain.

Token prune (`token_prune`): at each frame only the tokens above this log-probability extend a
hypothesis (blank always counts); CTC's peaky outputs make -5 as accurate as -10 at half the
search's cost on real speech.

LM look-ahead (as in Kaldi's and flashlight's lexicon decoders): a hypothesis inside a word is
ranked with the best word score below its trie node (the best word it can still become), so a
half-spelt word competes with complete ones on the same footing instead of escaping the LM until
its last letter; once the word completes, the look-ahead is replaced by the word's own score.

Engines (`eval.lexicon_engine`): the search below is asrkd's reference; "flashlight" runs the same
search in C++ (asrkd.lexicon_flashlight: flashlight-text over a KenLM copy of the LM), for
character tokenizers.

End of the utterance: a hypothesis inside a word is not dropped. If the letters spelt so far form
a word, that word ends it; otherwise it is completed to its look-ahead word, the best word it can
still become, with that word's score: the letters still missing had no frames left to be heard
in, so the LM alone chooses them, and the score it was ranked with stays its final score.

Dimension legend: T' output frames, V vocabulary (tokens, blank included).

Modules: asrkd.lexicon.lm (WordLM, WordTriples), asrkd.lexicon.sources (where an LM comes from,
and the LM as ARPA text), asrkd.lexicon.search (the search, and the decoder a config asks for);
every public name is importable from asrkd.lexicon itself.
"""

from asrkd.lexicon.lm import SENTENCE_START, WordLM, WordTriples
from asrkd.lexicon.search import LexiconDecoder, eval_decoder
from asrkd.lexicon.sources import (
    BOOKS_MASS,
    BOOKS_PAIRS,
    SPHINX_LM,
    ArpaFile,
    ArpaSource,
    arpa_lm,
    books_bigram,
    clear_caches,
    config_lm,
    lm_from_manifest,
    sphinx_bigram,
    sphinx_pairs,
    sphinx_trigram,
    sphinx_triples,
    stored_lm,
    training_lm,
    training_manifest,
    vocabulary_label,
    vocabulary_lm,
    wordfreq_lm,
)

__all__ = [
    "BOOKS_MASS",
    "BOOKS_PAIRS",
    "SENTENCE_START",
    "SPHINX_LM",
    "ArpaFile",
    "ArpaSource",
    "LexiconDecoder",
    "WordLM",
    "WordTriples",
    "arpa_lm",
    "books_bigram",
    "clear_caches",
    "config_lm",
    "eval_decoder",
    "lm_from_manifest",
    "sphinx_bigram",
    "sphinx_pairs",
    "sphinx_trigram",
    "sphinx_triples",
    "stored_lm",
    "training_lm",
    "training_manifest",
    "vocabulary_label",
    "vocabulary_lm",
    "wordfreq_lm",
]
