"""What a training run needs around its loop: device, data, teacher source, checkpoint state."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from lhotse import CutSet
from torch import Tensor

from asrkd.config import Config, ConfigError
from asrkd.data.dataset import (
    Batch,
    DataError,
    cut_text,
    load_cuts,
    split_by_speaker,
    strip_text,
)
from asrkd.data.text import Tokenizer, normalize_text, train_sentencepiece
from asrkd.data.validate import ctc_min_frames
from asrkd.distill.cache import TeacherCache, build_cache
from asrkd.distill.pseudo_labels import PseudoLabelStats, filter_pseudo_labels
from asrkd.distill.teachers import TeacherOutput, TeacherRequest, load_teacher
from asrkd.models.checkpoint import CheckpointError, read_checkpoint, read_checkpoint_meta

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on; the message says what to check."""


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# -- data -----------------------------------------------------------------------------------


def load_training_data(cfg: Config, distilling: bool) -> tuple[CutSet, CutSet]:
    """(train, dev) cuts. With data.labelled_fraction < 1 only some speakers keep transcripts;
    a distilling run keeps the rest as untranscribed audio, a baseline run drops it."""
    if not cfg.data.train_cuts or not cfg.data.dev_cuts:
        raise ConfigError("data.train_cuts and data.dev_cuts must be set")
    train = load_cuts(cfg.data.train_cuts)
    unlabelled = CutSet.from_cuts([])
    n_empty = sum(1 for c in train if not cut_text(c))
    if n_empty:
        raise DataError(
            f"{cfg.data.train_cuts}: {n_empty} cuts have no transcript; put "
            "untranscribed audio in data.unlabelled_cuts instead"
        )
    if cfg.data.labelled_fraction < 1.0:
        train, unlabelled = split_by_speaker(train, cfg.data.labelled_fraction, cfg.train.seed)
    if cfg.data.unlabelled_cuts:
        unlabelled = unlabelled + strip_text(load_cuts(cfg.data.unlabelled_cuts))
    if distilling and len(unlabelled):
        train = (train + unlabelled).to_eager()
    log.info(
        "train: %d cuts (%d untranscribed used)", len(train), len(unlabelled) if distilling else 0
    )
    return train, load_cuts(cfg.data.dev_cuts)


def build_tokenizer(cfg: Config, train_cuts: CutSet) -> Tokenizer:
    """The run's output units (model.tokenizer): letters, word pieces learnt on the transcribed
    training cuts, or the units of a tokenizer .json / model .safetensors file."""
    kind = cfg.model.tokenizer
    if kind == "char":
        return Tokenizer()
    if kind == "bpe":
        texts = [t for t in (cut_text(c) for c in train_cuts) if t]
        tok = train_sentencepiece(texts, cfg.model.bpe_size)
        log.info("BPE: %d symbols learnt on %d transcripts", tok.vocab_size, len(texts))
        return tok
    path = Path(kind)
    if path.suffix == ".safetensors":
        return Tokenizer.from_json(json.dumps(read_checkpoint_meta(path)["tokenizer"]))
    if path.suffix == ".json" and path.is_file():
        try:
            return Tokenizer.from_json(path.read_text())
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path}: not a tokenizer file ({err})") from err
    raise ConfigError(
        f'model.tokenizer={kind!r}: expected "char", "bpe", a tokenizer .json or a model '
        ".safetensors file that exists"
    )


# -- teacher ----------------------------------------------------------------------------------


class TeacherSource:
    """Teacher outputs for a batch: from the cache (built once per manifest) or online."""

    def __init__(self, cfg: Config, tokenizer: Tokenizer) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.teacher = load_teacher(cfg.teacher.kind, cfg.teacher.path, cfg.teacher)
        self.caches: list[TeacherCache] = []
        self.parts: list[tuple[TeacherRequest, list[TeacherCache]]] = []
        self.pseudo_labels = PseudoLabelStats()
        self.request = TeacherRequest()
        self.device = torch.device("cpu")

    def attach(
        self,
        request: TeacherRequest,
        device: torch.device,
        train_cuts: CutSet | None = None,
        output_frames: dict[str, int] | None = None,
    ) -> None:
        """Check compatibility and build (or reuse) the caches the request needs. `train_cuts`:
        the run's training cuts, whose transcripts (only those the run may see) are the
        references of distill.max_pseudo_wer. `output_frames`: cut id -> the student's output
        frames for it, which a teacher transcript must fit for CTC (None: not checked)."""
        self.request, self.device = request, device
        kind = self.cfg.teacher.kind
        offers = getattr(self.teacher, "offers", None)
        if offers is not None:
            missing = [
                what
                for what, asked, given in (
                    ("frame logits", request.logits, offers.logits),
                    ("hidden states", bool(request.hidden_layers), bool(offers.hidden_layers)),
                    ("transcripts", request.transcripts, offers.transcripts),
                )
                if asked and not given
            ]
            if missing:
                raise ConfigError(
                    f"distill.strategy={self.cfg.distill.strategy!r} needs the teacher's "
                    f"{' and '.join(missing)}, which a teacher.kind={kind!r} teacher does not "
                    "give: use distill.strategy=sequence (its transcripts)"
                )
        if getattr(self.teacher, "needs_audio", False) and not self.cfg.teacher.cache:
            raise ConfigError(
                f"teacher.kind={kind!r} hears audio, which training batches do not carry: it "
                "runs once into the teacher cache (set teacher.cache=true)"
            )
        if request.logits and self.teacher.tokenizer.symbols != self.tokenizer.symbols:
            raise ConfigError(
                f"teacher {self.cfg.teacher.path} has a different vocabulary from the student: "
                "frame-level logit KD needs the same symbols: set model.tokenizer to the "
                "teacher's model file to reuse its units, or use sequence or hidden KD"
            )
        if hasattr(self.teacher, "to"):
            self.teacher.to(device)
        if not self.cfg.teacher.cache:
            return
        manifests = [m for m in (self.cfg.data.train_cuts, self.cfg.data.unlabelled_cuts) if m]
        self.parts = [
            (part, [self._cache(m, part) for m in manifests]) for part in self._split(request)
        ]
        self.caches = [cache for _, caches in self.parts for cache in caches]
        if request.transcripts:
            self._filter_pseudo_labels(train_cuts, output_frames)

    def _split(self, request: TeacherRequest) -> list[TeacherRequest]:
        """The requests cached apart: for a teacher that hears audio (whisper, hf-ctc) its
        transcripts and its encoder states are separate, costly passes, so each has its own
        cache and sequence, hidden and sequence+hidden runs share them; one request otherwise."""
        if not getattr(self.teacher, "needs_audio", False):
            return [request]
        parts = [TeacherRequest(transcripts=True)] if request.transcripts else []
        if request.hidden_layers:
            parts.append(TeacherRequest(hidden_layers=request.hidden_layers))
        return parts or [request]

    def _cache(self, manifest: str, request: TeacherRequest) -> TeacherCache:
        return build_cache(
            self.teacher,
            manifest,
            request,
            self.cfg.teacher.cache_topk,
            self.cfg.teacher.cache_dir or None,
            progress=self.cfg.train.progress,
        )

    def _filter_pseudo_labels(
        self, train_cuts: CutSet | None, output_frames: dict[str, int] | None
    ) -> None:
        """Leave unmappable, repetitive (distill.max_pseudo_compression) and unalignable teacher
        transcripts, and those over distill.max_pseudo_wer against the utterance's own
        transcript, out of sequence KD (asrkd.distill.pseudo_labels)."""
        references = {}
        if self.cfg.distill.max_pseudo_wer and train_cuts is not None:
            references = {c.id: normalize_text(text) for c in train_cuts if (text := cut_text(c))}

        def fits(cut_id: str, text: str) -> bool:
            frames = output_frames.get(cut_id) if output_frames else None
            return frames is None or ctc_min_frames(self.tokenizer.encode(text)) <= frames

        stats = PseudoLabelStats()
        for cache in (c for part, caches in self.parts if part.transcripts for c in caches):
            cache.texts, part = filter_pseudo_labels(
                cache.texts,
                references,
                self.cfg.distill.max_pseudo_wer,
                self.cfg.distill.max_pseudo_compression,
                fits,
            )
            stats.merge(part)
        self.pseudo_labels = stats

    def __call__(self, batch: Batch) -> TeacherOutput:
        if not self.caches:
            return self.teacher(
                batch.feats.to(self.device), batch.feat_lens.to(self.device), self.request
            )
        outs = [_from_caches(caches, batch.cut_ids, part) for part, caches in self.parts]
        out = outs[0]
        for other in outs[1:]:  # the parts of one request: hidden states, transcripts
            out.hidden.update(other.hidden)
            out.transcripts = out.transcripts if other.transcripts is None else other.transcripts
        return out


def _from_caches(caches: list[TeacherCache], ids: list[str], request: TeacherRequest):
    """The cached outputs of cuts `ids`, which may come from several manifests' caches."""
    for cache in caches:
        if all(c in cache.entries for c in ids):
            return cache.get(ids, request)
    owners = [next(c for c in caches if i in c.entries) for i in ids]
    return _stack([cache.get([i], request) for cache, i in zip(owners, ids)])


def _stack(rows: list[TeacherOutput]) -> TeacherOutput:
    """Pad and stack single-utterance outputs (a batch mixing labelled and unlabelled cuts)."""
    lengths = torch.cat([r.lengths for r in rows])
    t_max = int(lengths.max())

    def pad(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, (0, 0, 0, t_max - x.shape[1]))

    out = TeacherOutput(lengths=lengths)
    if rows[0].logits is not None:
        out.logits = torch.cat([pad(r.logits) for r in rows])
    for layer in rows[0].hidden:
        out.hidden[layer] = torch.cat([pad(r.hidden[layer]) for r in rows])
    if rows[0].transcripts is not None:
        out.transcripts = [t for r in rows for t in r.transcripts]
    return out


def prepare_teacher(cfg: Config, tokenizer: Tokenizer):
    """(TeacherSource or None, teacher dims or None, teacher model or None)."""
    if cfg.distill.strategies == ("none",) and not cfg.distill.init_from_teacher_model:
        return None, None, None
    source = TeacherSource(cfg, tokenizer)
    # A teacher from another toolkit (whisper) states its sizes as `dims`; its `model` (built on
    # first use) is asked for only for distill.init_from_teacher.
    dims = getattr(source.teacher, "dims", None)
    model = None
    if dims is None or cfg.distill.init_from_teacher:
        model = getattr(source.teacher, "model", None)
    if dims is None and model is not None:
        dims = model.dims
    if cfg.distill.strategies == ("none",):
        return None, dims, model
    return source, dims, model


def build_teacher_caches(cfg: Config) -> None:
    """Fill the teacher caches a distillation run will read, without training it: a driver that
    then trains several students at once (asrkd demo) builds them first, alone, on all threads."""
    if cfg.distill.strategies == ("none",) or not cfg.teacher.cache:
        return
    from asrkd.distill.strategies import Distiller
    from asrkd.models import PRESETS

    train_cuts, _ = load_training_data(cfg, distilling=True)
    tokenizer = build_tokenizer(cfg, train_cuts)
    source, teacher_dims, _ = prepare_teacher(cfg, tokenizer)
    distiller = Distiller(cfg.distill, tokenizer, PRESETS[cfg.model.preset], teacher_dims)
    source.attach(distiller.request, torch.device("cpu"), train_cuts)


# -- checkpoints ------------------------------------------------------------------------------

_STEP_RE = re.compile(r"step-(\d+)\.safetensors$")


def checkpoint_step(path: Path) -> int:
    """The training step of a checkpoint file named step-NNNNNNN.safetensors."""
    return int(_STEP_RE.search(path.name).group(1))


def checkpoints_in(directory: Path) -> list[Path]:
    """The checkpoint files of a run's checkpoints/ folder, oldest step first."""
    found = (p for p in directory.glob("step-*.safetensors") if _STEP_RE.search(p.name))
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest readable checkpoint; an unreadable newest one is reported and skipped."""
    for path in reversed(checkpoints_in(directory)):
        try:
            read_checkpoint(path)
            return path
        except CheckpointError as err:
            log.error("skipping unusable checkpoint: %s", err)
    return None
