"""Every run's configuration: frozen dataclasses, the ONLY place defaults live.

YAML files mirror the dataclasses section by section; an unknown key is an error. The CLI
overrides single values with ``--set section.key=value`` and declares no defaults of its own.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

# Policies for bad input, shared by `prepare` and data loading.
AUDIO_POLICIES = ("skip", "fail")
RATE_POLICIES = ("resample", "skip", "fail")
CHANNEL_POLICIES = ("downmix", "skip", "fail")
TEXT_POLICIES = ("drop", "skip", "fail")  # drop = remove the offending characters


class ConfigError(ValueError):
    """A configuration value is missing, unknown or inconsistent."""


class CheckpointError(RuntimeError):
    """A model or checkpoint file is missing, truncated, or not an asrkd file. (Defined here,
    beside ConfigError, so the PyTorch-free path (asrkd.ondevice) raises it without importing
    torch; asrkd.models.checkpoint re-exports it.)"""


DECODERS = ("greedy", "lexicon")
# CTranslate2's compute types (teacher.compute_type of a Whisper teacher on faster-whisper)
CT2_COMPUTE_TYPES = ("default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16")
CT2_COMPUTE_TYPES += ("int16", "float16", "bfloat16", "float32")
PRECISIONS = ("fp32", "bf16", "auto")  # train.precision, eval.precision (asrkd.precision)


def parse_vocabulary(spec: str) -> tuple[bool, int]:
    """A lexicon vocabulary spec -> (uses the training transcripts, number of wordfreq words or
    0): "train", "wordfreq:N" or "train+wordfreq:N" (asrkd.lexicon)."""
    use_train, n_wordfreq = False, 0
    for part in spec.split("+"):
        name, _, n = part.partition(":")
        if part == "train" and not use_train:
            use_train = True
        elif name == "wordfreq" and n.isdigit() and int(n) > 0 and not n_wordfreq:
            n_wordfreq = int(n)
        else:
            raise ConfigError(
                f"vocabulary={spec!r}: expected 'train', 'wordfreq:N' or 'train+wordfreq:N'"
            )
    return use_train, n_wordfreq


BIGRAM_SOURCES = ("train", "books", "sphinx")  # asrkd.lexicon: whose word pairs


def parse_bigrams(spec: str) -> tuple[str, ...]:
    """A bigram spec ("train", "books", "sphinx", or some of them joined by "+" in that
    order, e.g. "train+books+sphinx") -> its sources (asrkd.lexicon)."""
    parts = tuple(spec.split("+"))
    ordered = tuple(s for s in BIGRAM_SOURCES if s in parts)
    if not set(parts) <= set(BIGRAM_SOURCES) or parts != ordered:
        raise ConfigError(
            f"bigrams={spec!r}: expected some of 'train', 'books', 'sphinx' joined by '+' in "
            "that order (e.g. 'train+books')"
        )
    return parts


def transcript_order(lm_order: int, bigrams: str) -> int:
    """The order of the transcripts' own LM: 2 where the bigram counts their word pairs."""
    return 2 if lm_order >= 2 and "train" in parse_bigrams(bigrams) else 1


LM_ORDERS = {1: "unigram", 2: "bigram", 3: "trigram"}


def _check_vocabulary(
    prefix: str, spec: str, wordfreq_weight: float, lm_order: int, bigrams: str, arpa: str
) -> None:
    use_train = parse_vocabulary(spec)[0]
    sources = parse_bigrams(bigrams)
    if not 0 < wordfreq_weight < 1:
        raise ConfigError(f"{prefix}wordfreq_weight must lie strictly between 0 and 1")
    if lm_order not in LM_ORDERS:
        raise ConfigError(
            f"{prefix}lm_order={lm_order} is not 1 (unigram), 2 (bigram) or 3 (trigram)"
        )
    if lm_order == 1 and bigrams != "train":
        raise ConfigError(f"{prefix}bigrams={bigrams!r} needs {prefix}lm_order=2 (a bigram)")
    if lm_order >= 2 and "train" in sources and not use_train:
        raise ConfigError(
            f"{prefix}lm_order={lm_order} with {prefix}bigrams={bigrams!r} counts word pairs in "
            "the transcripts: "
            f"{prefix}vocabulary={spec!r} has none ('train' or 'train+wordfreq:N'; or "
            f"{prefix}bigrams=books)"
        )
    if lm_order == 3 and not arpa and "sphinx" not in sources:
        raise ConfigError(
            f"{prefix}lm_order=3 takes its word triples from CMU Sphinx's LM: "
            f"{prefix}bigrams={bigrams!r} must include 'sphinx' (e.g. 'train+sphinx'), or "
            f"{prefix}arpa must name an LM file with 3-grams"
        )


def _vocabulary_tag(spec: str, wordfreq_weight: float, lm_order: int, bigrams: str) -> str:
    """'' for the default "train" unigram, else e.g. '-train+wordfreq50000w0.5-bigram' or
    '...-bigram-train+books', '...-trigram-train+sphinx' (file-name safe)."""
    order = f"-{LM_ORDERS[lm_order]}" if lm_order >= 2 else ""
    if bigrams != "train":
        order += f"-{bigrams}"
    if spec == "train":
        return order
    weight = f"w{wordfreq_weight:g}" if parse_vocabulary(spec)[0] else ""
    return f"-{spec.replace(':', '')}{weight}{order}"


# The fields of EvalConfig and ExportConfig that describe a lexicon decoder (same meaning in both)
LEXICON_FIELDS = (
    "beam",
    "lm_weight",
    "word_bonus",
    "vocabulary",
    "wordfreq_weight",
    "lm_order",
    "bigrams",
    "token_prune",
    "blank_penalty",
    "arpa",
    "lexicon_engine",
    "lm_cache",
)


def _check_arpa(prefix: str, arpa: str, vocabulary: str, bigrams: str, cuts: str) -> None:
    if arpa and (vocabulary != "train" or bigrams != "train"):
        raise ConfigError(
            f"{prefix}arpa={arpa!r} gives the lexicon's words and LM: leave {prefix}vocabulary "
            f"({vocabulary!r}) and {prefix}bigrams ({bigrams!r}) at 'train'"
        )
    if arpa and cuts:
        raise ConfigError(
            f"{prefix}arpa={arpa!r} gives the lexicon's words and LM: {prefix}lexicon_cuts "
            f"({cuts!r}) would not be used; leave it empty"
        )


def _arpa_tag(arpa: str) -> str:
    """'-arpa-NAME' for an LM file (NAME: its file name without .arpa / .gz, or .lm.bin for a
    Sphinx one), else ''."""
    if not arpa:
        return ""
    name = Path(arpa).name
    for suffix in (".gz", ".arpa", ".bin", ".lm"):
        name = name.removesuffix(suffix)
    return f"-arpa-{name}"


# the lexicon search's default token prune: a token is tried at a frame above this log-prob
TOKEN_PRUNE = -10.0
# who runs the lexicon search: flashlight-text's C++ decoder (asrkd.lexicon_flashlight), or
# asrkd's Python reference search (BPE tokenizers always use it). The default is the Python
# search: every published figure and every dev-tuned decoder setting (beam, LM weight, word
# bonus) was measured with it; flashlight's search is 5-11x faster, its WER within +-1.3 points
# on dev, but the demos' settings are not tuned for it (docs/benchmarks.md)
LEXICON_ENGINES = ("flashlight", "python")
LEXICON_ENGINE = "python"


def _check_token_prune(prefix: str, value: float) -> None:
    if not value < 0:
        raise ConfigError(
            f"{prefix}token_prune={value} must be a negative log-probability (-10: nearly every "
            "token; -inf: every token)"
        )


def _check_blank_penalty(prefix: str, value: float) -> None:
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{prefix}blank_penalty={value} must be >= 0 (0: off) and finite")


def _check_choice(name: str, value: str, choices: typing.Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")


FEATURE_KINDS = ("fbank", "whisper")


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel filterbank features, computed once by `asrkd prepare` and stored.

    kind "fbank": lhotse's Kaldi-style fbank (natural log). "whisper": Whisper's log-mel
    (asrkd.data.whisper_features; 16 kHz, 25 ms / 10 ms, n_mels 80 or 128), which
    Whisper-encoder models need."""

    sample_rate: int = 16000
    n_mels: int = 80
    frame_shift: float = 0.01  # 10 ms hop -> 100 frames per second
    frame_length: float = 0.025
    kind: str = "fbank"

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_mels <= 0:
            raise ConfigError("features.sample_rate and features.n_mels must be positive")
        _check_choice("features.kind", self.kind, FEATURE_KINDS)
        whisper = (self.sample_rate, self.frame_shift, self.frame_length) == (16000, 0.01, 0.025)
        if self.kind == "whisper" and not (whisper and self.n_mels in (80, 128)):
            raise ConfigError(
                "features.kind=whisper is Whisper's fixed log-mel: sample_rate 16000, "
                "frame_shift 0.01, frame_length 0.025, n_mels 80 or 128"
            )


@dataclass(frozen=True)
class PrepareConfig:
    """How `asrkd prepare` treats a corpus, bad files included."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    on_bad_audio: str = "skip"  # unreadable, truncated, zero-length audio
    on_wrong_rate: str = "resample"
    on_multichannel: str = "downmix"
    on_bad_text: str = "skip"  # empty or missing transcript, missing audio
    on_oov_chars: str = "drop"  # characters outside the tokenizer's vocabulary
    on_too_long: str = "skip"  # longer than max_seconds, or too short for its transcript in CTC
    max_seconds: float = 30.0
    num_jobs: int = 1

    def __post_init__(self) -> None:
        _check_choice("prepare.on_bad_audio", self.on_bad_audio, AUDIO_POLICIES)
        _check_choice("prepare.on_wrong_rate", self.on_wrong_rate, RATE_POLICIES)
        _check_choice("prepare.on_multichannel", self.on_multichannel, CHANNEL_POLICIES)
        _check_choice("prepare.on_bad_text", self.on_bad_text, AUDIO_POLICIES)
        _check_choice("prepare.on_oov_chars", self.on_oov_chars, TEXT_POLICIES)
        _check_choice("prepare.on_too_long", self.on_too_long, AUDIO_POLICIES)
        if self.max_seconds <= 0:
            raise ConfigError("prepare.max_seconds must be positive")


@dataclass(frozen=True)
class CorpusConfig:
    """The embedded synthetic corpus (`asrkd corpus`), written in the LibriSpeech layout.

    Speakers are synthetic voices, disjoint between train, dev and test; within each part they take
    turns over `engines` (see asrkd.data.tts: hibari is Apache-2.0, espeak is GPL-3.0 and optional).
    The audio is a function of these fields (and the engines' versions) only, except num_jobs.
    """

    seed: int = 0
    hours: float = 0.6  # train + dev + test
    engines: tuple[str, ...] = ("hibari", "espeak")
    n_train_voices: int = 40
    n_dev_voices: int = 6
    n_test_voices: int = 6
    chapters_per_speaker: int = 2
    voice_pitch: tuple[float, float] = (0.75, 1.3)  # times the engine's default F0
    voice_rate: tuple[float, float] = (0.85, 1.2)  # times the engine's default speaking rate
    voice_formant: tuple[float, float] = (0.88, 1.15)  # vocal-tract warp (hibari voices only)
    min_words: int = 4
    max_words: int = 14
    zipf_share: float = 0.5  # words drawn from Zipf's law over the list; the rest uniformly
    sample_rate: int = 16000
    level_db: float = -25.0  # RMS of the clean speech, dBFS, before volume_db is applied
    noise_prob: float = 0.5
    noise_types: tuple[str, ...] = ("white", "pink", "babble")
    snr_db: tuple[float, float] = (10.0, 30.0)
    reverb_prob: float = 0.3
    rt60: tuple[float, float] = (0.2, 0.7)  # seconds
    drr_db: tuple[float, float] = (0.0, 10.0)  # direct-to-reverberant ratio
    speed_range: tuple[float, float] = (0.9, 1.1)
    volume_db: tuple[float, float] = (-6.0, 3.0)
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    num_jobs: int = 2  # worker processes; does not change the output

    def __post_init__(self) -> None:
        from asrkd.data.tts import ENGINES  # lazy: config stays importable on its own

        if self.hours <= 0:
            raise ConfigError("corpus.hours must be positive")
        if not self.engines:
            raise ConfigError("corpus.engines must name at least one engine")
        for name in self.engines:
            _check_choice("corpus.engines", name, ENGINES)
        for name in self.noise_types:
            _check_choice("corpus.noise_types", name, ("white", "pink", "babble"))
        n_voices = (self.n_train_voices, self.n_dev_voices, self.n_test_voices)
        if min(n_voices) < 1 or max(n_voices) > 999:
            raise ConfigError("corpus needs 1 to 999 train, dev and test voices each")
        if not 1 <= self.min_words <= self.max_words:
            raise ConfigError("corpus.min_words must be in [1, max_words]")
        if not 0.0 <= self.zipf_share <= 1.0:
            raise ConfigError("corpus.zipf_share must be in [0, 1]")
        for name in ("voice_pitch", "voice_rate", "voice_formant", "snr_db", "rt60", "drr_db",
                     "speed_range", "volume_db"):  # fmt: skip
            low, high = getattr(self, name)
            if low > high:
                raise ConfigError(f"corpus.{name} must be (low, high) with low <= high")
        if min(self.voice_pitch + self.voice_rate + self.voice_formant + self.speed_range) <= 0:
            raise ConfigError("corpus voice and speed factors must be positive")
        if not (0 <= self.noise_prob <= 1 and 0 <= self.reverb_prob <= 1):
            raise ConfigError("corpus.noise_prob and corpus.reverb_prob must be in [0, 1]")
        if self.rt60[0] <= 0 or self.chapters_per_speaker < 1 or self.num_jobs < 1:
            raise ConfigError("corpus.rt60, chapters_per_speaker and num_jobs must be positive")
        if min(self.dev_fraction, self.test_fraction) <= 0 or (
            self.dev_fraction + self.test_fraction >= 1
        ):
            raise ConfigError("corpus dev/test fractions must be positive and sum below 1")


@dataclass(frozen=True)
class DataConfig:
    """Prepared cut manifests (from `asrkd prepare`) and how batches are drawn from them."""

    train_cuts: str = ""
    dev_cuts: str = ""
    test_cuts: tuple[str, ...] = ()
    unlabelled_cuts: str = ""  # audio without transcripts, used by distillation strategies
    labelled_fraction: float = 1.0  # keep transcripts for this fraction of train speakers
    max_batch_seconds: float = 120.0  # total audio per batch (duration-bucketed)
    num_buckets: int = 6
    spec_augment: bool = True
    n_freq_masks: int = 2
    freq_mask_width: int = 15
    n_time_masks: int = 2
    time_mask_fraction: float = 0.05
    # tempo perturbation on the features: each batch is stretched in time by one factor drawn
    # uniformly from [lo, hi] (1.1 = 10 % faster, fewer frames; pitch kept); (1, 1) is off
    tempo_range: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.max_batch_seconds <= 0:
            raise ConfigError("data.max_batch_seconds must be positive")
        tempo = self.tempo_range
        if len(tempo) != 2 or not 0.5 <= tempo[0] <= tempo[1] <= 2.0:
            raise ConfigError("data.tempo_range must be [lo, hi] with 0.5 <= lo <= hi <= 2")
        if not 0.0 < self.labelled_fraction <= 1.0:
            raise ConfigError("data.labelled_fraction must be in (0, 1]")


@dataclass(frozen=True)
class ModelConfig:
    """Which named preset (see asrkd.models.PRESETS), its dropout and its output units.

    tokenizer: "char" (letters), "bpe" (word pieces learnt on the run's transcribed training
    text, `bpe_size` symbols with the blank) or the path of a tokenizer .json or a model
    .safetensors whose units to reuse, e.g. a teacher's, which logit and hidden KD need.
    """

    preset: str = "tiny"
    dropout: float = 0.1
    tokenizer: str = "char"
    bpe_size: int = 256

    def __post_init__(self) -> None:
        from asrkd.models import PRESETS  # lazy: keeps config importable without torch

        _check_choice("model.preset", self.preset, PRESETS)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.dropout must be in [0, 1)")
        if not self.tokenizer:
            raise ConfigError('model.tokenizer must be "char", "bpe" or a file path')
        if not 29 <= self.bpe_size <= 8192:
            raise ConfigError("model.bpe_size must be in [29, 8192]")


@dataclass(frozen=True)
class TeacherConfig:
    """Where the teacher comes from and whether its outputs are cached."""

    kind: str = "checkpoint"
    path: str = ""
    cache: bool = True  # False: run the teacher online at every step
    cache_dir: str = ""  # default: beside the cut manifests
    cache_topk: int = 0  # 0 = keep the full distribution
    # kind=whisper: transcripts by greedy search (1) or beam search of this width; and the
    # faster-whisper compute type of a CTranslate2 folder (int8, float32, float16, int8_float16,
    # ...); hidden states always come from the fp32 PyTorch model.
    beam: int = 1
    compute_type: str = "int8"

    def __post_init__(self) -> None:
        from asrkd.distill.teachers import TEACHERS

        _check_choice("teacher.kind", self.kind, TEACHERS)
        if self.cache_topk < 0:
            raise ConfigError("teacher.cache_topk must be >= 0")
        if self.beam < 1:
            raise ConfigError("teacher.beam must be at least 1")
        _check_choice("teacher.compute_type", self.compute_type, CT2_COMPUTE_TYPES)


@dataclass(frozen=True)
class DistillConfig:
    """Which strategy trains the student, and the weights of its loss terms.

    `strategy` is one name from asrkd.distill.strategies.STRATEGIES or several joined by '+'
    (e.g. ``logit+hidden``). Logit KD: total = (1 - weight) * CTC + weight * KD.
    """

    strategy: str = "none"
    weight: float = 0.02
    temperature: float = 1.0
    sequence_weight: float = 0.5  # teacher-transcript CTC vs ground-truth CTC
    hidden_weight: float = 1.0
    hidden_layer_map: tuple[tuple[int, int], ...] = ()  # (student layer, teacher layer); () = auto
    init_from_teacher: bool = False
    # A pretrained Whisper (Hugging Face folder or Hub id, or CTranslate2 folder) whose front end,
    # evenly spaced encoder blocks and final LayerNorm start a Whisper-encoder student; takes
    # precedence over init_from_teacher and needs no teacher.
    init_from: str = ""
    # Sequence KD: a teacher transcript whose WER against the utterance's own transcript exceeds
    # this is left out of the teacher term (untranscribed utterances are never checked).
    # 0 = off, every transcript kept; distil-whisper uses 0.1 (10 %).
    max_pseudo_wer: float = 0.0
    # Sequence KD: a teacher transcript whose gzip compression ratio exceeds this repeats itself
    # (Whisper's loops on silence, music or noise) and is left out, with or without a
    # transcript of its own; 0 = off. openai/whisper and faster-whisper use 2.4; LibriSpeech
    # transcripts stay under 1.9.
    max_pseudo_compression: float = 2.4

    def __post_init__(self) -> None:
        from asrkd.distill.strategies import STRATEGIES

        for name in self.strategy.split("+"):
            _check_choice("distill.strategy", name, STRATEGIES)
        if not 0.0 <= self.weight <= 1.0 or not 0.0 <= self.sequence_weight <= 1.0:
            raise ConfigError("distill.weight and distill.sequence_weight must be in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError("distill.temperature must be positive")
        if self.max_pseudo_wer < 0:
            raise ConfigError("distill.max_pseudo_wer must be >= 0 (0 = off)")
        if self.max_pseudo_compression < 0:
            raise ConfigError("distill.max_pseudo_compression must be >= 0 (0 = off)")
        taken = self.weight * ("logit" in self.strategies)
        taken += self.sequence_weight * ("sequence" in self.strategies)
        if taken > 1.0 + 1e-9:
            raise ConfigError(
                "distill.weight + distill.sequence_weight exceed 1: the CTC term would be negative"
            )

    @property
    def strategies(self) -> tuple[str, ...]:
        return tuple(self.strategy.split("+"))

    @property
    def init_from_teacher_model(self) -> bool:
        """The student starts from the teacher's weights (init_from, when set, wins)."""
        return self.init_from_teacher and not self.init_from


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 1000
    lr: float = 2e-3
    # The student's layers other than its CTC head learn at lr * encoder_lr_scale: below 1 for an
    # encoder copied from a pretrained model (distill.init_from_teacher, init_from), so a fresh
    # head learns fast while the copied layers move slowly.
    encoder_lr_scale: float = 1.0
    # The first head_steps steps train only the CTC head (and the distiller's projections) with
    # the rest of the student frozen; the student's other layers then start their own warm-up and
    # cosine decay. With an encoder copied from a pretrained model this skips CTC's all-blank
    # plateau: the fresh head first learns to read the copied states (linear probing, then
    # fine-tuning; docs/benchmarks.md). 0 = off.
    head_steps: int = 0
    # Parameters of the student that never train: names or name prefixes as the model's
    # state dict spells them (a whisper-tiny-enc4 student: conv1, conv2, blocks.0, ...). With
    # the lower layers of a copied encoder frozen, no gradient is computed below the first layer
    # that trains: cheaper steps. Each entry must name at least one parameter.
    freeze: tuple[str, ...] = ()
    # Keep each training utterance's output of the frozen layers at the student's input (front
    # end and lowest blocks, from train.freeze) in memory after its first pass, and start its
    # later passes above them: a Whisper-encoder student with conv1, conv2, blocks.0 and
    # blocks.1 frozen spends ~27 % of a step there (docs/benchmarks.md). Memory: the states of
    # every training utterance, 4 * d_model * 50 bytes per second of audio (277 MB per hour at
    # Whisper tiny's width). Needs features the same in every pass (no data.spec_augment, no
    # data.tempo_range) and model.dropout=0.
    cache_frozen: bool = False
    # The student's forward pass in "fp32" or "bf16" (torch.autocast with bfloat16: matrix
    # products in bfloat16; weights, optimiser, losses and dev scoring in float32), or "auto":
    # bf16 where the hardware computes it (a CPU with AVX512-BF16 or AMX: AMD Zen 4, Intel
    # Sapphire Rapids and later; a GPU of the Ampere generation or later), else fp32; the run's
    # summary.json names the one used. A Whisper-encoder student trains ~1.7x faster on such a
    # CPU with the same dev WER (docs/benchmarks.md); elsewhere bfloat16 is emulated and slower
    # (a warning says so). Small models (a few M parameters at width 144) gain nothing.
    precision: str = "fp32"
    # Intermediate CTC (Lee & Watanabe, 2021): the output of block `inter_ctc_block` (0-based;
    # -1 = the middle one, (n_layers - 1) // 2) is also read by the student's CTC head (after its
    # final LayerNorm, for Whisper-encoder students) and trained on the same CTC targets as the
    # last block, ground truth and teacher transcripts alike; the term is added with weight
    # `inter_ctc_weight` (0 = off). No parameter is added: the model file and its speed are the
    # same.
    inter_ctc_weight: float = 0.0
    inter_ctc_block: int = -1
    min_lr_ratio: float = 0.05  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 1e-3
    grad_clip: float = 5.0
    checkpoint_every: int = 100
    eval_every: int = 200
    keep_checkpoints: int = 2
    # The model kept (model.safetensors): 0 = the best on dev of the evaluations (eval_every);
    # K > 0 = the mean of the weights of the last K checkpoints, the final step's included
    # (icefall's --avg; keep_checkpoints must keep them), scored on dev once. In the real-speech
    # recipe a single checkpoint's dev WER moved by up to ~1 point between checkpoints 100 steps
    # apart; means of the last 2-6 beat the final step's in 9 of 10 cases (docs/benchmarks.md).
    average_last: int = 0
    threads: int = 0  # 0 = torch's default; per process when processes > 1
    # Data-parallel processes on this machine, each on its share of every batch (asrkd.distributed;
    # GPUs: one per process). On 2 CPU cores 2 x 1 thread is no faster than 1 x 2 threads (the
    # gradient exchange eats the gain; docs/benchmarks.md).
    processes: int = 1
    device: str = "auto"  # auto = cuda when available, else cpu
    max_bad_steps: int = 20  # consecutive non-finite losses before the run stops
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_steps <= 0 or self.checkpoint_every <= 0 or self.eval_every <= 0:
            raise ConfigError("train.max_steps, checkpoint_every and eval_every must be positive")
        if self.processes < 1:
            raise ConfigError("train.processes must be at least 1")
        if not 0 <= self.average_last <= self.keep_checkpoints:
            raise ConfigError(
                f"train.average_last={self.average_last}: between 0 and train.keep_checkpoints "
                f"({self.keep_checkpoints}), the checkpoints kept to be averaged"
            )
        if self.lr <= 0:
            raise ConfigError("train.lr must be positive")
        if not 0.0 < self.encoder_lr_scale <= 1.0:
            raise ConfigError("train.encoder_lr_scale must be in (0, 1]")
        if not 0 <= self.head_steps < self.max_steps:
            raise ConfigError("train.head_steps must be in [0, max_steps)")
        _check_choice("train.precision", self.precision, PRECISIONS)
        if self.inter_ctc_weight < 0 or self.inter_ctc_block < -1:
            raise ConfigError(
                "train.inter_ctc_weight must be >= 0 (0 = off) and train.inter_ctc_block a block "
                "index or -1 (the middle block)"
            )
        if any(not name or name.startswith(".") or name.endswith(".") for name in self.freeze):
            raise ConfigError("train.freeze: parameter names or prefixes such as blocks.0")


@dataclass(frozen=True)
class EvalConfig:
    """How `asrkd evaluate` decodes and measures. decoder "greedy" is CTC best path; "lexicon"
    is a beam search restricted to the words of `vocabulary` with a unigram, bigram or trigram LM
    (`lm_order`, `bigrams`; asrkd.lexicon): "train" takes the transcripts of `lexicon_cuts` (a
    cut manifest; empty: the lexicon an exported file carries, else the model's own training
    manifest, named in its checkpoint); "wordfreq:N" the N most frequent English words of the
    wordfreq package; "train+wordfreq:N" both, mixed with weight `wordfreq_weight` on wordfreq.
    `arpa`, an ARPA file, replaces vocabulary and bigrams. Greedy results are written beside."""

    threads: int = 0
    batch_seconds: float = 60.0  # batch used for the throughput measurement
    latency_utterances: int = 20  # utterances timed one at a time for latency and RTF
    decoder: str = "greedy"
    lexicon_cuts: str = ""
    beam: int = 8
    lm_weight: float = 0.5
    word_bonus: float = 1.0
    vocabulary: str = "train"
    wordfreq_weight: float = 0.5  # lambda of the "train+wordfreq:N" interpolation
    # 1: unigram; 2: bigram, backing off to the unigram; 3: trigram, CMU Sphinx's word triples
    # (1.6 M, shipped by pocketsphinx; `bigrams` must include "sphinx") over the bigram
    lm_order: int = 1
    # the bigram's word pairs: "train", the transcripts'; "books", English books' (242k frequent
    # pairs from Google Books, shipped by the symspellpy package); "sphinx", CMU Sphinx's US
    # English LM's (2 M pairs, shipped by pocketsphinx); joined by "+" ("train+books"), each
    # interpolated over the next (asrkd.lexicon)
    bigrams: str = "train"
    # a token is tried at a frame only where its log-probability is above this (CTC's peaky
    # outputs: real speech, -5 halves the search's cost of -10 at the same WER)
    token_prune: float = TOKEN_PRUNE
    # subtracted from CTC blank's log-probability at every frame before the lexicon search (0:
    # off): a student whose outputs favour blank drops letters and words, and the search's LM
    # cannot put them back (the real-speech recipe's students, most of all those of sequence KD:
    # at 1.0 dev WER -0.7 points over four, docs/benchmarks.md round 11). Greedy decoding is
    # never affected.
    blank_penalty: float = 0.0
    # a word LM in ARPA format (KenLM's lmplz, SRILM; .arpa or .arpa.gz), or a CMU Sphinx binary
    # one (.lm.bin, e.g. pocketsphinx's model/en-us/en-us.lm.bin; asrkd.sphinx_lm): its words are
    # the vocabulary and its 1-grams (and, for lm_order 2 or 3, its 2-grams and 3-grams with
    # their back-offs) the LM, in place of `vocabulary` and `bigrams`; higher orders are not read
    arpa: str = ""
    # "flashlight" (C++, several times faster, a fraction of the memory) or "python" (the
    # reference search); BPE tokenizers are searched by the Python engine either way
    lexicon_engine: str = LEXICON_ENGINE
    # a folder for the lexicon decoder's built LMs ("": none): the first decoder of an LM writes
    # it there as ARPA text, every later one (any model, any process) reads that file instead of
    # building the LM again (the real-speech recipe's trigram: 7-13 s and ~0.86 GB at its peak
    # to build); the C++ engine only (asrkd.lexicon_cache)
    lm_cache: str = ""
    # a .safetensors model's forward pass: "fp32"; "bf16" under torch.autocast with bfloat16
    # (weights float32; ~2x faster on a CPU with AVX512-BF16 or AMX, emulated and slower on one
    # without); "auto" = bf16 where the CPU computes it, else fp32. WER, latency and memory are
    # all measured in it. ONNX files run as exported.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        _check_choice("eval.decoder", self.decoder, DECODERS)
        _check_choice("eval.precision", self.precision, PRECISIONS)
        _check_choice("eval.lexicon_engine", self.lexicon_engine, LEXICON_ENGINES)
        _check_arpa("eval.", self.arpa, self.vocabulary, self.bigrams, self.lexicon_cuts)
        if self.beam < 1:
            raise ConfigError("eval.beam must be at least 1")
        _check_token_prune("eval.", self.token_prune)
        _check_blank_penalty("eval.", self.blank_penalty)
        _check_vocabulary(
            "eval.", self.vocabulary, self.wordfreq_weight, self.lm_order, self.bigrams, self.arpa
        )

    @property
    def tag(self) -> str:
        """The decoding settings, as they appear in output file names."""
        if self.decoder == "greedy":
            return "greedy"
        vocabulary = _vocabulary_tag(
            self.vocabulary, self.wordfreq_weight, self.lm_order, self.bigrams
        )
        prune = "" if self.token_prune == TOKEN_PRUNE else f"-tp{-self.token_prune:g}"
        prune += f"-bp{self.blank_penalty:g}" if self.blank_penalty else ""
        weights = f"lexicon-b{self.beam}-lm{self.lm_weight:g}-wb{self.word_bonus:g}"
        engine = "-fl" if self.lexicon_engine == "flashlight" else ""  # python: the older names
        return f"{weights}{_arpa_tag(self.arpa)}{vocabulary}{prune}{engine}"


@dataclass(frozen=True)
class Config:
    """One training or distillation run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        needs_teacher = self.distill.strategies != ("none",) or self.distill.init_from_teacher_model
        if needs_teacher and not self.teacher.path:
            raise ConfigError(
                f"distill.strategy={self.distill.strategy!r} needs a teacher: set teacher.path"
            )
        if self.data.unlabelled_cuts and self.distill.strategies == ("none",):
            raise ConfigError("data.unlabelled_cuts is only used by a distillation strategy")
        if self.distill.init_from:
            from asrkd.models import preset_family

            if preset_family(self.model.preset) != "whisper-encoder":
                raise ConfigError(
                    f"distill.init_from copies a Whisper encoder: model.preset={self.model.preset!r}"
                    " is not a Whisper-encoder preset (whisper-*)"
                )
        if self.distill.init_from_teacher_model and self.teacher.kind not in (
            "checkpoint",
            "whisper",
        ):
            raise ConfigError(
                "distill.init_from_teacher copies layers of an asrkd model or of Whisper: it "
                f"needs teacher.kind=checkpoint or whisper, not {self.teacher.kind!r}"
            )
        if self.teacher.kind == "whisper" and "logit" in self.distill.strategies:
            raise ConfigError(
                "teacher.kind=whisper gives no frame logits for distill.strategy=logit: Whisper "
                "writes word pieces of its own vocabulary one after another, not per-frame CTC "
                "posteriors over the student's units; use sequence and/or hidden KD"
            )
        if self.distill.max_pseudo_wer and not self.teacher.cache:
            raise ConfigError(
                "distill.max_pseudo_wer filters cached teacher transcripts: set teacher.cache=true"
            )
        if self.train.cache_frozen:
            changes = {
                "data.spec_augment=true": self.data.spec_augment,
                f"data.tempo_range={list(self.data.tempo_range)}": self.data.tempo_range
                != (1.0, 1.0),
                f"model.dropout={self.model.dropout}": self.model.dropout != 0.0,
            }
            if any(changes.values()):
                names = ", ".join(k for k, v in changes.items() if v)
                raise ConfigError(
                    "train.cache_frozen reuses the frozen layers' output of an utterance's first "
                    f"pass, which {names} would change from pass to pass: turn it off, or "
                    "train.cache_frozen=false"
                )
            if not self.train.freeze:
                raise ConfigError("train.cache_frozen needs frozen layers: set train.freeze")


# ---------------------------------------------------------------------------------------------
# Conversion between dataclasses, dicts, YAML and `--set` overrides.


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON/YAML-safe dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build a (nested) config dataclass from a plain dict; unknown keys are an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where or 'config'}: {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}".lstrip("."))
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where or 'config'}: {err}") from err


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the field's declared type, with a clear error."""
    if is_dataclass(hint):
        return from_dict(hint, value or {}, where)
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where} must have {len(args)} items, got {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return "" if value is None else str(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}") from err
    return value


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (value parsed as YAML) to a nested plain dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file into a plain dict (empty file -> {})."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(
    path: str | Path | None, overrides: typing.Sequence[str] = (), cls: type = Config
) -> Any:
    """Load a config dataclass from YAML (or defaults when path is None) plus overrides."""
    data = load_yaml(path) if path else {}
    apply_overrides(data, overrides)
    return from_dict(cls, data)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (round-trips through load_config)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def replace(cfg: Any, overrides: typing.Sequence[str]) -> Any:
    """A copy of a config with ``a.b=value`` overrides applied (validated again)."""
    return from_dict(type(cfg), apply_overrides(to_dict(cfg), overrides))


@dataclass(frozen=True)
class SweepConfig:
    """Options of `asrkd sweep` (the grid itself comes from --grid on the command line)."""

    seeds: int = 1
    jobs: int = 1
    storage: str = ""  # default: sqlite:///<sweep dir>/study.db
    study_name: str = "asrkd-sweep"
    n_trials: int = 0  # for TPE over ranges; 0 = the full grid
    prune: bool = False  # median pruner on dev WER
    metric: str = "dev_wer"
    baseline: bool = True  # add one distill.strategy=none run per seed as the reference
    measure: str = "preset"  # latency/memory: "all" trials, the first of each "preset", "none"
    heartbeat_seconds: int = 10  # a worker marks its trial alive this often
    grace_seconds: int = 60  # a RUNNING trial silent this long is stale: failed and retried
    max_retries: int = 3  # retries of a trial that failed or went stale
    prune_startup_trials: int = 5  # finished trials before the median pruner acts
    prune_warmup_steps: int = 0  # training steps before a trial may be pruned

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.jobs < 1:
            raise ConfigError("sweep.seeds and sweep.jobs must be >= 1")
        _check_choice("sweep.metric", self.metric, ("dev_wer", "dev_cer"))
        _check_choice("sweep.measure", self.measure, ("all", "preset", "none"))
        if self.n_trials < 0 or self.max_retries < 0:
            raise ConfigError("sweep.n_trials and sweep.max_retries must be >= 0")
        if self.heartbeat_seconds < 1 or self.grace_seconds <= self.heartbeat_seconds:
            raise ConfigError("sweep.heartbeat_seconds must be >= 1 and < sweep.grace_seconds")


@dataclass(frozen=True)
class DemoConfig:
    """`asrkd demo`: corpus -> teacher -> students with and without distillation -> report.

    `run` is the template of every training run (data paths and out_dir are filled in by the
    demo); `teacher_overrides` and `student_overrides` apply on top of it. Every student is
    trained once without distillation (the baseline) and once per entry of `variants`, a
    (name, overrides) pair. Scenario (a): students see every transcript. Scenario (b): students
    see transcripts of `partial_fraction` of the train speakers; distilled students also use the
    rest as untranscribed audio, the baseline does not.
    """

    out_dir: str = "runs/demo"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    run: Config = field(default_factory=Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    teacher_preset: str = "demo-teacher"
    teacher_steps: int = 1500
    teacher_overrides: tuple[str, ...] = ()
    student_preset: str = "demo-student"
    small_student_preset: str = "demo-student-xs"  # '' to skip; trained in scenario (a) only
    student_steps: int = 600
    student_overrides: tuple[str, ...] = ()
    variants: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("logit", ("distill.strategy=logit",)),  # at its defaults: weight 0.02, temperature 1
        ("sequence", ("distill.strategy=sequence",)),
    )
    partial_fraction: float = 0.3
    # Students trained at once, each in its own process on one thread (teacher first, alone):
    # on 2 cores two one-thread runs finish sooner than two two-thread runs one after the other.
    parallel_runs: int = 1
    # Export the distilled student with the best dev WER as one int8 ONNX file (with the
    # lexicon when eval.decoder is lexicon) and score that file on the test voices too: the
    # model a user ships (needs the export extra).
    deliver_int8: bool = True
    librispeech_train_part: str = "train-clean-5"
    librispeech_test_part: str = "test-other"
    librispeech_dev_speakers: int = 3
    # Variants trained in situation (a) and in situation (b) (names from `variants`; () = every
    # variant): a recipe can list more variants than its default time allows.
    full_variants: tuple[str, ...] = ()
    partial_variants: tuple[str, ...] = ()
    partial_baseline: bool = True  # situation (b)'s own student without distillation
    # A folder of untranscribed audio (any layout; prepared like `asrkd prepare audio`) that the
    # distilled students of situation (b) hear besides the untranscribed part of train.
    unlabelled_audio: str = ""
    # > 0: every model is also scored on the test set with noise added at this SNR (asrkd's own
    # augmentation, noise_types taking turns per utterance by a seeded draw): devices hear noise.
    noise_snr_db: float = 0.0
    noise_types: tuple[str, ...] = ("white", "pink")
    noise_seed: int = 0
    # An external teacher (run.teacher.kind other than "checkpoint", e.g. whisper, with
    # run.teacher.path) is not trained; its rows are scored by each of these runtimes.
    teacher_runtimes: tuple[str, ...] = ("pytorch",)

    def __post_init__(self) -> None:
        from asrkd.models import PRESETS

        for preset in (self.teacher_preset, self.student_preset):
            _check_choice("teacher_preset/student_preset", preset, PRESETS)
        if self.small_student_preset:
            _check_choice("small_student_preset", self.small_student_preset, PRESETS)
        names = [name for name, _ in self.variants]
        if not names or len(set(names)) != len(names) or "none" in names:
            raise ConfigError("variants need distinct names other than 'none'")
        for name, overrides in self.variants:  # validated over the demo's own run settings
            replace(self.run, [*overrides, "teacher.path=teacher.safetensors"])
        replace(self.run, [*self.teacher_overrides, *self.student_overrides])
        if not 0.0 < self.partial_fraction < 1.0:
            raise ConfigError("partial_fraction must be in (0, 1)")
        if self.parallel_runs < 1:
            raise ConfigError("parallel_runs must be at least 1")
        if min(self.teacher_steps, self.student_steps) <= 0:
            raise ConfigError("teacher_steps and student_steps must be positive")
        unknown = set(self.full_variants + self.partial_variants) - set(names)
        if unknown:
            raise ConfigError(
                f"full/partial_variants name no variant: {', '.join(sorted(unknown))}"
            )
        if self.noise_snr_db < 0:
            raise ConfigError("noise_snr_db must be >= 0 (0 = no noisy test set)")
        for kind in self.noise_types:
            _check_choice("noise_types", kind, ("white", "pink"))
        if not self.noise_types:
            raise ConfigError("noise_types must name at least one noise")
        if self.external_teacher:
            from asrkd.teacher_eval import RUNTIMES

            if not self.teacher_runtimes:
                raise ConfigError("teacher_runtimes must name at least one runtime")
            for runtime in self.teacher_runtimes:
                _check_choice("teacher_runtimes", runtime, RUNTIMES)

    @property
    def external_teacher(self) -> bool:
        """The teacher comes from elsewhere (run.teacher), not from the demo's own training."""
        return self.run.teacher.kind != "checkpoint"


EXPORT_FORMATS = ("onnx",)
# "asrkd": one .onnx file (asrkd transcribe/evaluate); "sherpa-onnx": a folder that
# sherpa_onnx.OfflineRecognizer loads: from_zipformer_ctc (Conformer students) or
# from_moonshine (Whisper-encoder students) (asrkd.sherpa).
EXPORT_TARGETS = ("asrkd", "sherpa-onnx")


@dataclass(frozen=True)
class ExportConfig:
    """`asrkd export`: a model file -> one self-contained ONNX file (weights, tokenizer and
    feature settings in its metadata), optionally with int8 weights."""

    format: str = "onnx"
    target: str = "asrkd"  # one of EXPORT_TARGETS
    opset: int = 23  # ONNX operator set, 18..23 (23: attention as one op; docs/benchmarks.md)
    quantize: bool = False  # int8 weights (dynamic quantisation) for the ops in quantize_ops
    # Conv adds the convolutions: a smaller file still, but onnxruntime's ConvInteger is slower
    # on CPU than its fp32 convolutions (benchmarks/export.py).
    quantize_ops: tuple[str, ...] = ("MatMul", "Gemm")
    # One int8 scale per output channel instead of one per weight matrix: the recipe's Whisper
    # student lost 0.5 points of dev WER per tensor and none per channel (docs/benchmarks.md).
    quantize_per_channel: bool = True
    verify: bool = True  # run the exported fp32 graph against eager PyTorch before saving
    # Max abs logit (log-prob) difference accepted by `verify`. A graph with wrong weights or ops
    # is off by far more; fp32 kernels of onnxruntime and PyTorch differ by ~2e-5 typically, and
    # reached 6.3e-4 on 2 of 1,500 frames of the 31-s check for the recipe's (b) student.
    verify_tolerance: float = 1e-3
    # A cut manifest whose transcripts' words and word LM are stored in the file, so that
    # `asrkd transcribe` decodes with the lexicon beam search below (as `asrkd evaluate` does
    # with eval.decoder=lexicon); empty: no lexicon (greedy decoding) unless `vocabulary` has
    # wordfreq words or `arpa` names an LM file, which store one by themselves. "train": the
    # model's own training manifest, named in its checkpoint. `vocabulary`, `wordfreq_weight`,
    # `lm_order`, `bigrams`, `token_prune` and `arpa` as in EvalConfig.
    lexicon_cuts: str = ""
    beam: int = 8
    lm_weight: float = 0.5
    word_bonus: float = 1.0
    vocabulary: str = "train"
    wordfreq_weight: float = 0.5
    lm_order: int = 1
    bigrams: str = "train"
    token_prune: float = TOKEN_PRUNE
    blank_penalty: float = 0.0  # as in EvalConfig; stored in the file, applied by its search
    arpa: str = ""  # an ARPA word LM, as in EvalConfig: its words and LM are stored in the file
    # The search the file names as its own: `asrkd transcribe` uses it unless --lexicon-engine
    # says otherwise, so that the file transcribes as it was scored (the searches differ on a
    # few words in a hundred)
    lexicon_engine: str = LEXICON_ENGINE
    lm_cache: str = ""  # built LMs' folder, as in EvalConfig (asrkd.lexicon_cache)

    def __post_init__(self) -> None:
        _check_choice("format", self.format, EXPORT_FORMATS)
        _check_choice("lexicon_engine", self.lexicon_engine, LEXICON_ENGINES)
        _check_arpa("", self.arpa, self.vocabulary, self.bigrams, self.lexicon_cuts)
        _check_choice("target", self.target, EXPORT_TARGETS)
        # 18: the lowest the torch.export-based exporter targets. 23 turns attention into ONNX
        # Attention, whose onnxruntime kernel rejects a broadcast (B, 1, 1, T') key mask: the
        # models give it its query axis while exporting (models.conformer.exported_mask).
        if not 18 <= self.opset <= 23:
            raise ConfigError(f"opset={self.opset} is outside the supported 18..23")
        for op in self.quantize_ops:
            _check_choice("quantize_ops", op, ("MatMul", "Gemm", "Conv"))
        if not self.quantize_ops and self.quantize:
            raise ConfigError("quantize=true needs at least one of quantize_ops")
        if self.verify_tolerance <= 0:
            raise ConfigError("verify_tolerance must be positive")
        if self.beam < 1:
            raise ConfigError("beam must be at least 1")
        _check_token_prune("", self.token_prune)
        _check_blank_penalty("", self.blank_penalty)
        _check_vocabulary(
            "", self.vocabulary, self.wordfreq_weight, self.lm_order, self.bigrams, self.arpa
        )
        mixes_train = self.vocabulary != "train" and parse_vocabulary(self.vocabulary)[0]
        if mixes_train and not self.lexicon_cuts:
            raise ConfigError(
                f"vocabulary={self.vocabulary!r} takes words from lexicon_cuts' transcripts: "
                "set lexicon_cuts (a cut manifest, or 'train')"
            )
