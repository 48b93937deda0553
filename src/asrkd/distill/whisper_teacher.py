"""teacher.kind=whisper: OpenAI Whisper (an HF folder or Hub id, or a CTranslate2 folder) as a
teacher of sequence-level and hidden-state KD. Needs ``asrkd[whisper]``.

It hears audio, so it runs once per manifest into the teacher cache (`needs_audio`), and gives:

- transcripts (`distill.strategy=sequence`, also on untranscribed audio): English, greedy
  (`teacher.beam=1`) or beam search; no timestamps, no conditioning on earlier text, no voice
  activity detection; an utterance past 30 s is read in consecutive 30-s windows. A CTranslate2
  folder is decoded by faster-whisper at `teacher.compute_type` (utterances of up to 30 s
  CT2_BATCH at a time, each in its own window: the text faster-whisper gives it alone),
  anything else by transformers' `generate` (fp32), one utterance at a time. The text is
  spelled into the student's units by `asrkd.data.normalize.normalize_english`; a transcript
  it cannot map is stored as None: logged by cut id, counted, and left out of the teacher term.
- hidden states (`distill.strategy=hidden`) of any encoder layer, always from the fp32 PyTorch
  model (CTranslate2's int8 encoder gets some frames badly wrong), computed on the UNPADDED
  utterance at 50 frames per second. **Layer i is the output of encoder block i (0-based)**;
  the last block's output has the encoder's final LayerNorm applied (it is what the decoder
  attends to). So layer i equals transformers' ``hidden_states[i + 1]`` on the same input.
  Positions past Whisper's 1500 (30 s) continue the sinusoid formula, so long utterances are not
  cut. The frame counts it reports are these 50 Hz counts; HiddenKD aligns them to the
  student's frames.
- no frame logits: its tokens are Whisper's word pieces, decoded one by one, not CTC posteriors
  over the student's units (Config rejects `logit` KD with a Whisper teacher).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from asrkd.config import TeacherConfig
from asrkd.data.normalize import normalize_english
from asrkd.data.text import Tokenizer
from asrkd.models.whisper_encoder import inv_timescales, sinusoids

if TYPE_CHECKING:  # teachers.py imports this module to list it in TEACHERS
    from asrkd.distill.teachers import TeacherOutput, TeacherRequest
from asrkd.models.whisper_io import (
    HOP_LENGTH,
    N_SAMPLES_30S,
    is_ct2_folder,
    load_whisper,
    whisper_config,
    whisper_fingerprint,
)

log = logging.getLogger(__name__)


class _QuietGenerateKwargs(logging.Filter):
    """Drops transformers' "Passing `generation_config` together with generation-related
    arguments ... is deprecated" warning. Whisper's own generate() passes suppress_tokens and
    begin_suppress_tokens beside the generation config to GenerationMixin.generate (a workaround
    in transformers 5.x, generation_whisper.py), so every user of Whisper in transformers gets it
    and none can act on it. Only that message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            "together with generation-related arguments" in message and "suppress_tokens" in message
        )


logging.getLogger("transformers.generation.utils").addFilter(_QuietGenerateKwargs())

SAMPLE_RATE = 16000  # Whisper hears 16 kHz audio
RUNTIMES = ("faster-whisper", "transformers")  # what writes the transcripts
NORMALIZER_VERSION = 1  # bump when normalize_english changes what it writes
# utterances decoded together by CTranslate2 in the teacher cache: on 2 cores, tiny.en int8
# transcribed 60 train-clean-5 utterances 1.26x as fast as one by one at 8, 1.14x at 16, with
# the same text (docs/benchmarks.md); the encoder, always a full 30-s window, dominates
CT2_BATCH = 8


@dataclass(frozen=True)
class WhisperDims:
    """What hidden-state KD needs to know of the teacher."""

    n_layers: int
    d_model: int


def n_encoder_frames(n_samples: int) -> int:
    """Encoder frames (50 per second) of an utterance of n_samples at 16 kHz: n_samples // 160
    log-mel frames, halved (rounding up) by the stride-2 second convolution."""
    return (n_samples // HOP_LENGTH + 1) // 2


def log_mel(extractor, samples: np.ndarray) -> Tensor:
    """(n_mels, n_samples // 160) log-mel of one 16 kHz utterance, as Whisper computes it: the
    extractor sees the utterance zero-padded to 30 s (its level clamp and scale are then the
    same as for Whisper's own input); only the utterance's own frames are kept."""
    n_frames = len(samples) // HOP_LENGTH
    length = max(N_SAMPLES_30S, len(samples) + HOP_LENGTH)
    feats = extractor(
        samples,
        sampling_rate=SAMPLE_RATE,
        return_tensors="pt",
        padding="max_length",
        max_length=length,
        truncation=False,
    ).input_features[0]
    return feats[:, :n_frames].float()


def encoder_states(model, mel: Tensor, layers: tuple[int, ...]) -> dict[int, Tensor]:
    """{layer: (T', D)} of transformers' Whisper encoder run on an unpadded log-mel (n_mels, T),
    T' = ceil(T / 2). Layer i is the output of block i; the last one after the final LayerNorm."""
    enc = model.model.encoder
    x = torch.nn.functional.gelu(enc.conv1(mel[None].to(enc.conv1.weight)))
    x = torch.nn.functional.gelu(enc.conv2(x)).transpose(1, 2)  # (1, T', D)
    n, table = x.shape[1], enc.embed_positions.weight
    pos = table[:n]
    if n > table.shape[0]:  # past 30 s: the same sinusoids, continued
        extra = sinusoids(n, inv_timescales(table.shape[1]))[table.shape[0] :].to(table)
        pos = torch.cat([table, extra])
    x = x + pos
    out, last = {}, len(enc.layers) - 1
    for i, layer in enumerate(enc.layers[: max(layers) + 1]):
        x = layer(x, attention_mask=None)
        x = x[0] if isinstance(x, tuple) else x
        if i in layers:
            out[i] = (enc.layer_norm(x) if i == last else x)[0].float()
    return out


class WhisperTeacher:
    """Whisper as a teacher: transcripts (faster-whisper or transformers) and encoder states
    (fp32 PyTorch). `path`: HF folder, Hub id, or CTranslate2 folder."""

    needs_audio = True  # build_cache passes audio=[(samples, sample_rate), ...]

    def __init__(
        self, path: str | Path, beam: int = 1, compute_type: str = "int8", runtime: str = "auto"
    ) -> None:
        self.path, self.beam, self.compute_type = str(path), beam, compute_type
        self.ct2 = is_ct2_folder(self.path)
        # The fp32 PyTorch model is built on first use (hidden states, transformers' search): a
        # transcripts-only run on faster-whisper never needs it.
        self._model = None
        cfg, gen = whisper_config(self.path)
        self.n_mels = cfg.num_mel_bins
        self.dims = WhisperDims(cfg.encoder_layers, cfg.d_model)
        from asrkd.distill.teachers import TeacherRequest

        self.offers = TeacherRequest(
            transcripts=True, hidden_layers=tuple(range(cfg.encoder_layers))
        )
        self.multilingual = bool(getattr(gen, "is_multilingual", False))
        self.tokenizer = Tokenizer()  # asrkd's characters: the cache collates with it
        self.device = torch.device("cpu")
        self._extractor = self._decoder = self._text_tokenizer = None
        if runtime == "auto":  # the fastest correct one installed
            runtime = "faster-whisper" if self.ct2 and _has_faster_whisper() else "transformers"
        if runtime not in RUNTIMES or (runtime == "faster-whisper" and not self.ct2):
            raise ValueError(f"runtime={runtime!r}: faster-whisper needs a CTranslate2 folder")
        self.runtime = runtime
        settings = f"{self.runtime}\nbeam={beam}\n"
        if self.runtime == "faster-whisper":
            settings += f"compute_type={compute_type}\n"
        settings += f"normalizer={NORMALIZER_VERSION}\n"
        self._fingerprint = hashlib.sha256(
            (whisper_fingerprint(self.path) + "\n" + settings).encode()
        ).hexdigest()

    @classmethod
    def from_config(cls, cfg: TeacherConfig) -> WhisperTeacher:
        return cls(cfg.path, beam=cfg.beam, compute_type=cfg.compute_type)

    def fingerprint(self) -> str:
        return self._fingerprint

    def to(self, device: torch.device) -> WhisperTeacher:
        self.device = device
        if self._model is not None:
            self._model.to(device)
        return self

    @property
    def model(self):
        """transformers' WhisperForConditionalGeneration, fp32, on the teacher's device."""
        if self._model is None:
            self._model = load_whisper(self.path).to(self.device)
            self._model.requires_grad_(False)
        return self._model

    @property
    def extractor(self):
        if self._extractor is None:
            from transformers import WhisperFeatureExtractor

            self._extractor = WhisperFeatureExtractor(feature_size=self.n_mels)
        return self._extractor

    # -- transcripts --------------------------------------------------------------------------

    def transcribe(self, samples: np.ndarray) -> str:
        """Whisper's text (as written, not normalised) for one 16 kHz mono utterance."""
        if self.runtime == "faster-whisper":
            return self._transcribe_ct2(samples)
        return " ".join(
            self._transcribe_hf(samples[i : i + N_SAMPLES_30S])
            for i in range(0, max(1, len(samples)), N_SAMPLES_30S)
        ).strip()

    def transcribe_many(self, clips: list[np.ndarray]) -> list[str]:
        """`transcribe` of each 16 kHz mono utterance. On faster-whisper, utterances of at most
        30 s are decoded CT2_BATCH at a time (the same greedy or beam search as one by one, the
        same text: each is still its own zero-padded 30-s window; the decoder's steps are shared);
        a longer one is read window by window alone."""
        if self.runtime != "faster-whisper":
            return [self.transcribe(x) for x in clips]
        texts: list[str | None] = [None] * len(clips)
        short = [i for i, x in enumerate(clips) if len(x) <= N_SAMPLES_30S]
        short.sort(key=lambda i: len(clips[i]))  # similar lengths decode a similar number of steps
        for k in range(0, len(short), CT2_BATCH):
            group = short[k : k + CT2_BATCH]
            for i, text in zip(group, self._transcribe_ct2_batch([clips[i] for i in group])):
                texts[i] = text
        return [self.transcribe(x) if t is None else t for x, t in zip(clips, texts)]

    def _faster_whisper(self):
        if self._decoder is None:
            from faster_whisper import WhisperModel

            # it logs a line per utterance at INFO: thousands in a teacher pass
            logging.getLogger("faster_whisper").setLevel(logging.WARNING)

            device = "cuda" if self.device.type == "cuda" else "cpu"
            self._decoder = WhisperModel(
                self.path,
                device=device,
                compute_type=self.compute_type,
                cpu_threads=torch.get_num_threads(),
            )
        return self._decoder

    def _transcribe_ct2(self, samples: np.ndarray) -> str:
        segments, _ = self._faster_whisper().transcribe(
            samples,
            language="en",
            task="transcribe",
            beam_size=self.beam,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return "".join(s.text for s in segments).strip()

    def _transcribe_ct2_batch(self, clips: list[np.ndarray]) -> list[str]:
        """_transcribe_ct2 of utterances of at most 30 s in one CTranslate2 call: what
        faster-whisper's `transcribe` does for one window with the options above (its log-mel of
        the utterance zero-padded to 3,000 frames, its prompt and suppressed tokens, a window
        dropped as silence when no_speech_prob > 0.6 and the mean log-prob < -1), for a batch."""
        return [text for text, _ in self.ct2_batch_scored(clips)]

    def ct2_batch_scored(self, clips: list[np.ndarray]) -> list[tuple[str, float]]:
        """(text, mean token log-prob: faster-whisper's avg_logprob) of each utterance of at
        most 30 s, as _transcribe_ct2_batch writes it (benchmarks/whisper_confidence.py)."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer as FWTokenizer
        from faster_whisper.transcribe import get_ctranslate2_storage, get_suppressed_tokens

        fw = self._faster_whisper()
        tok = FWTokenizer(fw.hf_tokenizer, fw.model.is_multilingual, task="transcribe",
                          language="en")  # fmt: skip
        feats = []
        for x in clips:
            mel = fw.feature_extractor(x, chunk_length=30)
            feats.append(pad_or_trim(mel[:, : mel.shape[-1] - 1]))  # its content frames
        encoded = fw.model.encode(get_ctranslate2_storage(np.stack(feats)))
        prompt = [*tok.sot_sequence, tok.no_timestamps]
        results = fw.model.generate(
            encoded,
            [prompt] * len(clips),
            beam_size=self.beam,
            patience=1,
            length_penalty=1,
            max_length=fw.max_length,
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tok, [-1])),
            return_scores=True,
            return_no_speech_prob=True,
        )
        out = []
        for r in results:
            ids = r.sequences_ids[0]
            mean_logprob = r.scores[0] * len(ids) / (len(ids) + 1)
            if r.no_speech_prob > 0.6 and mean_logprob < -1.0:
                out.append(("", mean_logprob))
            else:
                out.append((tok.decode([t for t in ids if t < tok.eot]).strip(), mean_logprob))
        return out

    def _transcribe_hf(self, samples: np.ndarray) -> str:
        """One window of at most 30 s. Its log-mel is that of the audio zero-padded to 30 s,
        as openai/whisper computes it (faster-whisper instead pads the log-mel with zeros:
        the same words in most utterances, not in all)."""
        feats = self.extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return self.generate_text(feats.input_features)

    def generate_text(self, input_features: Tensor) -> str:
        """transformers' search on a (1, n_mels, 3000) log-mel window -> Whisper's text."""
        if self._text_tokenizer is None:
            self._text_tokenizer = _text_tokenizer(self.path, self.ct2)
        options = {"language": "en", "task": "transcribe"} if self.multilingual else {}
        with torch.inference_mode():
            ids = self.model.generate(
                input_features.to(self.device),
                num_beams=self.beam,
                do_sample=False,
                return_timestamps=False,
                **options,
            )
        return self._text_tokenizer.decode(ids[0].tolist(), skip_special_tokens=True).strip()

    # -- the Teacher protocol -----------------------------------------------------------------

    def __call__(
        self,
        feats: Tensor,
        feat_lens: Tensor,
        request: TeacherRequest,
        audio: list[tuple[np.ndarray, int]] | None = None,
    ) -> TeacherOutput:
        if request.logits:
            raise ValueError(f"teacher {self.path} (whisper) gives no frame logits")
        bad = [i for i in request.hidden_layers if not 0 <= i < self.dims.n_layers]
        if bad:
            raise ValueError(f"teacher {self.path} has {self.dims.n_layers} layers; asked {bad}")
        if audio is None or len(audio) != len(feat_lens):
            raise ValueError(f"teacher {self.path} (whisper) needs the audio of every utterance")
        from asrkd.data.audio import resample_mono
        from asrkd.distill.teachers import TeacherOutput

        clips = [resample_mono(x, sr, SAMPLE_RATE).astype(np.float32) for x, sr in audio]
        lengths = torch.tensor([n_encoder_frames(len(x)) for x in clips])
        out = TeacherOutput(lengths=lengths)
        if request.transcripts:
            out.transcripts = [normalize_english(t) for t in self.transcribe_many(clips)]
        if request.hidden_layers:
            rows = []
            with torch.inference_mode():
                for x in clips:
                    rows.append(
                        encoder_states(
                            self.model,
                            log_mel(self.extractor, x).to(self.device),
                            request.hidden_layers,
                        )
                    )
            t_max = int(lengths.max())
            for layer in request.hidden_layers:
                padded = torch.zeros(len(clips), t_max, self.dims.d_model)
                for i, row in enumerate(rows):
                    padded[i, : row[layer].shape[0]] = row[layer].cpu()
                out.hidden[layer] = padded
        return out


def _has_faster_whisper() -> bool:
    import importlib.util

    return importlib.util.find_spec("faster_whisper") is not None


def _text_tokenizer(path: str, ct2: bool):
    """Something with `decode(ids, skip_special_tokens=True)` for Whisper's token ids."""
    if ct2:
        from tokenizers import Tokenizer as HFTokenizer

        return HFTokenizer.from_file(str(Path(path) / "tokenizer.json"))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
