"""The training loop of every strategy (asrkd.training's docstring: the run folder)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from asrkd.config import Config, ConfigError, save_config, to_dict
from asrkd.data.dataset import (
    Batch,
    batch_frames,
    collate,
    feature_config_of,
    make_sampler,
    resample_frames,
    spec_augment,
    stretched_lengths,
    tempo_stretch,
)
from asrkd.distill.pseudo_labels import LEFT_OUT_FILE
from asrkd.distill.strategies import Distiller
from asrkd.distill.teachers import TeacherOutput
from asrkd.distributed import (
    SINGLE,
    World,
    broadcast_parameters,
    share_of_batch,
    sum_gradients,
)
from asrkd.evaluation import decode_cuts, error_rates
from asrkd.models import CTCModel, build_model
from asrkd.models.checkpoint import (
    read_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from asrkd.models.conformer import ModelOutput
from asrkd.precision import autocast_of, resolve_precision
from asrkd.runtime import (
    TrainingError,
    build_tokenizer,
    checkpoint_step,
    checkpoints_in,
    latest_checkpoint,
    load_training_data,
    prepare_teacher,
    select_device,
)
from asrkd.training.schedule import (
    body_lr_factor,
    frozen_parameters,
    head_lr_factor,
    seed_everything,
)

log = logging.getLogger(__name__)

LOG_EVERY = 10  # steps between metrics.jsonl rows


@dataclass
class TrainState:
    """Everything besides tensors that a checkpoint must restore."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    bad_steps: int = 0
    consecutive_bad: int = 0
    best_dev_wer: float = math.inf
    best_step: int = -1
    audio_seconds: float = 0.0
    train_seconds: float = 0.0
    python_rng: Any = None
    numpy_rng: Any = None
    history: list[dict] = field(default_factory=list)  # dev evaluations so far


class Trainer:
    """Owns the model, optimiser, data and teacher of one run (or of this process's part of a
    data-parallel run: asrkd.distributed)."""

    def __init__(self, cfg: Config, resume: bool = False, world: World = SINGLE) -> None:
        if not world.is_main:  # one progress bar, one set of files: rank 0's
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
        self.cfg, self.world = cfg, world
        self.out = Path(cfg.train.out_dir)
        self.device = select_device(cfg.train.device)
        if self.device.type == "cuda" and world.distributed:
            self.device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(self.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self._check_out_dir(resume)
        seed_everything(cfg.train.seed)
        distilling = cfg.distill.strategies != ("none",)
        self.train_cuts, self.dev_cuts = load_training_data(cfg, distilling)
        self.tokenizer = build_tokenizer(cfg, self.train_cuts)
        self.features = to_dict(feature_config_of(self.train_cuts))
        self.teacher_source, teacher_dims, teacher_model = prepare_teacher(cfg, self.tokenizer)
        self.model = self._build_student(teacher_model, self.train_cuts[0].num_features)
        self.distiller = Distiller(
            cfg.distill,
            self.tokenizer,
            self.model.dims,
            teacher_dims,
            inter_ctc_weight=cfg.train.inter_ctc_weight,
        )
        self.distiller.to(self.device)
        if self.teacher_source is not None:
            self.teacher_source.attach(
                self.distiller.request, self.device, self.train_cuts, self._ctc_frames()
            )
            stats = self.teacher_source.pseudo_labels
            if self.distiller.request.transcripts and world.is_main:  # sequence KD's, by name
                stats.write_tsv(self.out / LEFT_OUT_FILE)
                if stats.n_left_out:
                    log.info("teacher transcripts left out, listed in %s", self.out / LEFT_OUT_FILE)
        # what the optimiser trains: the student but its frozen layers, and the distiller's
        # projections
        frozen = frozen_parameters(self.model, cfg.train.freeze)
        self.front_blocks = self._cached_front(frozen)  # None: train.cache_frozen off
        self.inter_block = self._inter_block(frozen)  # None: train.inter_ctc_weight 0
        self.front_cache: dict[str, torch.Tensor] = {}  # cut id -> (T', D) frozen output
        self.params = [p for p in self.model.parameters() if p not in frozen]
        self.params += list(self.distiller.parameters())
        # fused: one kernel per tensor instead of a dozen small ops (half the optimizer's time
        # on CPU); the same update up to rounding
        head = set(self.model.ctc_head.parameters()) | set(self.distiller.parameters())
        groups = [
            {"params": [p for p in self.params if p in head], "lr": cfg.train.lr},
            {
                "params": [p for p in self.params if p not in head],
                "lr": cfg.train.lr * cfg.train.encoder_lr_scale,
            },
        ]
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.body_params = groups[1]["params"]  # frozen during train.head_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            [partial(head_lr_factor, tc=cfg.train), partial(body_lr_factor, tc=cfg.train)],
        )
        self.aug_gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.autocast = autocast_of(self.precision, self.device)
        self.state = TrainState()
        if resume:
            self._resume()
        if world.distributed:
            broadcast_parameters(self.model, world)
            broadcast_parameters(self.distiller, world)
            if not world.is_main:  # other dropout masks and augmentations than rank 0's
                seed = cfg.train.seed + 7919 * world.rank + self.state.step
                torch.manual_seed(seed)
                self.aug_gen.manual_seed(seed + 1)

    def _ctc_frames(self) -> dict[str, int] | None:
        """Cut id -> the student's output frames for it at its shortest (data.tempo_range's
        fastest tempo), which a teacher transcript must fit for CTC; None when no cached
        transcripts are asked for."""
        if not (self.distiller.request.transcripts and self.cfg.teacher.cache):
            return None
        frames = torch.tensor([batch_frames(c) for c in self.train_cuts])
        fastest = max(1.0, self.cfg.data.tempo_range[1])
        out = self.model.output_lengths(stretched_lengths(frames, fastest))
        return dict(zip((c.id for c in self.train_cuts), out.tolist()))

    def _check_out_dir(self, resume: bool) -> None:
        has_ckpt = latest_checkpoint(self.out / "checkpoints") is not None
        if has_ckpt and not resume:
            raise TrainingError(
                f"{self.out} already holds checkpoints: pass --resume to continue that run, "
                "or choose another train.out_dir"
            )
        if self.world.is_main:
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
            for folder in (self.out, self.out / "checkpoints"):  # a killed run's half-writes
                remove_stale_temporaries(folder)
            save_config(self.cfg, self.out / "config.yaml")

    def _build_student(self, teacher_model: CTCModel | None, n_mels: int) -> CTCModel:
        cfg = self.cfg
        model = build_model(cfg.model.preset, self.tokenizer.vocab_size, n_mels, cfg.model.dropout)
        kind = self.features["kind"]
        if model.family == "whisper-encoder" and kind != "whisper":
            raise ConfigError(
                f"model.preset={cfg.model.preset} (a Whisper encoder) needs Whisper features, but "
                f"{cfg.data.train_cuts} carries features.kind={kind}: prepare the data with "
                "--set features.kind=whisper"
            )
        if cfg.distill.init_from:
            from asrkd.distill.student_init import init_from_whisper
            from asrkd.models.whisper_io import load_whisper

            path = cfg.distill.init_from
            init_from_whisper(model, load_whisper(path), f"distill.init_from={path}")
        elif cfg.distill.init_from_teacher:
            from asrkd.distill.student_init import init_from_teacher, init_from_whisper

            if hasattr(teacher_model, "get_encoder"):  # a transformers Whisper teacher
                init_from_whisper(model, teacher_model, f"teacher.path={cfg.teacher.path}")
            else:
                init_from_teacher(model, teacher_model)
        return model.to(self.device)

    def _cached_front(self, frozen: set[torch.nn.Parameter]) -> int | None:
        """train.cache_frozen: how many of the student's blocks (above its front end) the cached
        states cover; a ConfigError where the model cannot start above frozen layers, its front
        end is not frozen, or hidden KD reads a block below the cached one."""
        if not self.cfg.train.cache_frozen:
            return None
        frozen_front = getattr(self.model, "frozen_front", None)
        if frozen_front is None:
            raise ConfigError(
                f"train.cache_frozen: a {self.model.family} student cannot start above its "
                "frozen layers (Whisper-encoder students can)"
            )
        n = frozen_front(frozen)
        if n is None:
            raise ConfigError(
                "train.cache_frozen keeps the output of the frozen layers at the student's input: "
                f"train.freeze={list(self.cfg.train.freeze)} leaves its front end (conv1, conv2) "
                "training"
            )
        parts = self.distiller.parts
        hidden = parts["hidden"].layer_map if "hidden" in parts else ()
        below = [s for s, _ in hidden if s < n - 1]
        if below:
            raise ConfigError(
                f"train.cache_frozen keeps only block {n - 1}'s output of the frozen blocks, but "
                f"hidden KD reads the student's block(s) {below}: set distill.hidden_layer_map "
                "to blocks from there up, or train.cache_frozen=false"
            )
        return n

    def _inter_block(self, frozen: set[torch.nn.Parameter]) -> int | None:
        """train.inter_ctc_weight: the block whose output the intermediate CTC term reads (None:
        off); a ConfigError where it is the last block or a frozen one (train.freeze)."""
        tc = self.cfg.train
        if not tc.inter_ctc_weight:
            return None
        n_layers = self.model.dims.n_layers
        block = (n_layers - 1) // 2 if tc.inter_ctc_block == -1 else tc.inter_ctc_block
        if not 0 <= block < n_layers - 1:
            raise ConfigError(
                f"train.inter_ctc_block={tc.inter_ctc_block}: a block below the last of the "
                f"student's {n_layers} (0 to {n_layers - 2}, or -1 for the middle one)"
            )
        if all(p in frozen for p in self.model.blocks[block].parameters()):
            raise ConfigError(
                f"train.inter_ctc_block={block}: that block is frozen (train.freeze), so "
                "intermediate CTC could not train it; choose a block that trains"
            )
        return block

    def _forward_cached(self, batch: Batch):
        """The student on `batch` starting above its frozen layers, whose output per utterance
        is computed on its first pass and kept (train.cache_frozen)."""
        n = self.front_blocks
        lengths = self.model.output_lengths(batch.feat_lens)
        missing = [i for i, cut_id in enumerate(batch.cut_ids) if cut_id not in self.front_cache]
        if missing:
            rows = torch.tensor(missing)
            feat_lens = batch.feat_lens[rows]
            feats = batch.feats[rows, : int(feat_lens.max())]
            with torch.no_grad(), self.autocast():
                x = self.model.front(feats.to(self.device), feat_lens.to(self.device), n)
            for j, i in enumerate(missing):
                self.front_cache[batch.cut_ids[i]] = x[j, : int(lengths[i])].float().cpu().clone()
        x = torch.nn.utils.rnn.pad_sequence(
            [self.front_cache[cut_id] for cut_id in batch.cut_ids], batch_first=True
        )
        with self.autocast():
            return self.model.forward_from(x.to(self.device), lengths.to(self.device), n)

    def _resume(self) -> None:
        path = latest_checkpoint(self.out / "checkpoints")
        if path is None:
            log.warning("no checkpoint in %s: starting from scratch", self.out)
            return
        self._restore(path)
        if self.world.is_main:
            self._truncate_metrics(self.state.step)
        log.info("resumed %s at step %d", path, self.state.step)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric rows written after the checkpoint we resume from."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            rows = [r for r in path.read_text().splitlines() if r.strip()]
            keep = [r for r in rows if json.loads(r).get("step", 0) <= step]
            path.write_text("".join(r + "\n" for r in keep))

    # -- the loop -------------------------------------------------------------------------

    def batches(self):
        """Yield (epoch, index in epoch, cuts) forever, skipping what a resumed run consumed."""
        sampler = make_sampler(
            self.train_cuts, self.cfg.data, shuffle=True, seed=self.cfg.train.seed
        )
        while True:
            sampler.set_epoch(self.state.epoch)
            for i, cuts in enumerate(sampler):
                if i < self.state.batch_in_epoch:
                    continue  # already trained on before the checkpoint we resumed from
                yield i, cuts
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    def step(self, batch: Batch | None, weight: float = 1.0) -> dict[str, float] | None:
        """One optimisation step; None when the loss or gradients were not finite.

        In a data-parallel run `batch` is this process's share of the batch (None: no share)
        and `weight` that share's part of the batch's audio."""
        self.optimizer.zero_grad(set_to_none=True)
        frozen = self.state.step < self.cfg.train.head_steps
        for p in self.body_params:  # frozen: no gradient is computed below the head
            p.requires_grad_(not frozen)
        total, terms = self._loss(batch) if batch is not None else (None, {})
        finite = total is None or bool(torch.isfinite(total))
        if total is not None and finite:
            (total * weight if weight != 1.0 else total).backward()
        if self.world.distributed:
            finite, total, terms = self._sum_over_processes(finite, total, terms, weight)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.scheduler.step()
        row = {"loss": _number(total), "grad_norm": norm.item()}
        row.update({k: _number(v) for k, v in terms.items()})
        return row

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted total, unweighted terms) of the model on `batch`."""
        self.model.train()
        self.distiller.train()
        feats, feat_lens = batch.feats, batch.feat_lens
        teacher_out = None
        if self.teacher_source is not None:
            teacher_out = self.teacher_source(batch)  # clean features
        lo, hi = self.cfg.data.tempo_range
        factor = 1.0
        if (lo, hi) != (1.0, 1.0):
            factor = lo + (hi - lo) * float(torch.rand((), generator=self.aug_gen))
            feats, feat_lens = tempo_stretch(feats, feat_lens, factor)
        if self.cfg.data.spec_augment:
            feats = spec_augment(feats, feat_lens, self.cfg.data, self.aug_gen)
        if self.front_blocks is not None:  # the same features every pass (Config checks)
            out = self._forward_cached(batch)
        else:
            with self.autocast():
                out = self.model(feats.to(self.device), feat_lens.to(self.device))
        out = as_float32(out)  # the losses in float32 whatever train.precision
        if factor != 1.0 and teacher_out is not None:
            teacher_out = _retime(teacher_out, out.lengths)
        inter = None
        if self.inter_block is not None:
            with self.autocast():
                inter = self.model.intermediate_logits(out.hidden_states[self.inter_block])
            inter = inter.float()
        return self.distiller(out, teacher_out, batch.to(self.device), inter)

    def _sum_over_processes(self, finite: bool, total, terms: dict, weight: float):
        """Sum gradients, the not-finite flag and the weighted loss terms over the processes:
        (all finite, whole-batch loss, whole-batch terms)."""
        names = sorted(self.distiller.weights)
        local = [0.0 if finite else 1.0, 0.0, *([0.0] * len(names))]
        if total is not None and finite:
            local[1] = total.item() * weight
            local[2:] = [terms[k].item() * weight for k in names]
        summed = sum_gradients(self.params, torch.tensor(local, dtype=torch.float64), self.world)
        return bool(summed[0] == 0), float(summed[1]), dict(zip(names, summed[2:].tolist()))

    def _share(self, cuts: list) -> tuple[Batch | None, float]:
        """This process's part of a batch and its share of the audio (the whole batch, 1.0, in
        a one-process run)."""
        if not self.world.distributed:
            return collate(cuts, self.tokenizer), 1.0
        durations = [c.duration for c in cuts]
        mine = [cuts[i] for i in share_of_batch(durations, self.world)]
        if not mine:
            return None, 0.0
        return collate(mine, self.tokenizer), sum(c.duration for c in mine) / sum(durations)

    def run(self, on_eval: Callable[[int, dict], None] | None = None) -> dict:
        cfg, st = self.cfg, self.state
        bar = tqdm(
            total=cfg.train.max_steps,
            initial=st.step,
            desc=f"train {self.out.name}",
            disable=not cfg.train.progress,
            dynamic_ncols=True,
        )
        t_last, audio_last = time.perf_counter(), 0.0
        for i, cuts in self.batches():
            if st.step >= cfg.train.max_steps:
                break
            t0 = time.perf_counter()
            cuts = list(cuts)
            row = self.step(*self._share(cuts))
            st.batch_in_epoch = i + 1
            audio = sum(c.duration for c in cuts)
            self._account(row, audio, cuts[0].id, time.perf_counter() - t0)
            if row is None:
                continue
            st.step += 1
            audio_last += audio
            if not self.world.is_main:
                continue  # rank 0 logs, evaluates and saves
            if st.step % LOG_EVERY == 0 or st.step == cfg.train.max_steps:
                speed = audio_last / max(1e-9, time.perf_counter() - t_last)
                self._log(
                    {
                        "step": st.step,
                        "epoch": st.epoch,
                        **row,
                        "lr": self.scheduler.get_last_lr()[0],
                        "audio_s_per_s": speed,
                    }
                )
                bar.set_postfix(
                    loss=f"{row['loss']:.3f}",
                    lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                    audio_s_per_s=f"{speed:.0f}",
                )
                t_last, audio_last = time.perf_counter(), 0.0
            bar.update(1)
            if st.step % cfg.train.eval_every == 0 or st.step == cfg.train.max_steps:
                self._evaluate(on_eval)
            if st.step % cfg.train.checkpoint_every == 0 or st.step == cfg.train.max_steps:
                self.save_checkpoint()
        bar.close()
        return self._finish()

    def _account(self, row: dict | None, audio: float, first_cut: str, seconds: float) -> None:
        st = self.state
        st.train_seconds += seconds
        if row is not None:
            st.audio_seconds += audio
            st.consecutive_bad = 0
            return
        st.bad_steps += 1
        st.consecutive_bad += 1
        log.warning(
            "non-finite loss or gradient at step %d (batch %s...): batch skipped",
            st.step,
            first_cut,
        )
        if st.consecutive_bad >= self.cfg.train.max_bad_steps:
            raise TrainingError(
                f"{st.consecutive_bad} consecutive batches gave a non-finite loss or gradient. "
                "Check: train.lr (try lower) and train.grad_clip; features with NaN/inf "
                "(re-run `asrkd prepare`); a teacher that outputs NaN; distill.temperature."
            )

    def _log(self, row: dict) -> None:
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def _score_dev(self, **extra) -> dict:
        """Greedy dev WER/CER of the model as it is now, logged and kept in the history."""
        st = self.state
        results = decode_cuts(
            self.model, self.dev_cuts, self.tokenizer, self.cfg.data.max_batch_seconds, self.device
        )
        wer, cer = error_rates(results)
        row = {"step": st.step, "dev_wer": wer, "dev_cer": cer, **extra}
        st.history.append(row)
        self._log(row)
        return row

    def _evaluate(self, on_eval: Callable[[int, dict], None] | None) -> None:
        st = self.state
        row = self._score_dev()
        wer = row["dev_wer"]
        if wer < st.best_dev_wer:
            st.best_dev_wer, st.best_step = wer, st.step
            self.save_model(self.out / "model.safetensors")
        if on_eval is not None:
            on_eval(st.step, row)

    def save_model(self, path: Path) -> None:
        save_checkpoint(path, self.model, self.tokenizer, to_dict(self.cfg), features=self.features)

    def save_checkpoint(self) -> None:
        st = self.state
        st.python_rng = list(random.getstate()[1])
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        st.numpy_rng = [keys.tolist(), int(pos), int(has_gauss), float(gauss)]
        path = self.out / "checkpoints" / f"step-{st.step:07d}.safetensors"
        tensors, meta = self._checkpoint_tensors()
        save_checkpoint(
            path,
            self.model,
            self.tokenizer,
            to_dict(self.cfg),
            extra_tensors=tensors,
            train_state={**st.__dict__, **meta},
            features=self.features,
        )
        for stale in checkpoints_in(self.out / "checkpoints")[: -self.cfg.train.keep_checkpoints]:
            stale.unlink()

    def _checkpoint_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Optimiser, distiller and RNG tensors, plus JSON-able optimiser/scheduler metadata."""
        tensors = dict(rng_state())
        tensors["rng.specaug"] = self.aug_gen.get_state()
        for k, v in self.distiller.state_dict().items():
            tensors[f"distill.{k}"] = v
        opt = self.optimizer.state_dict()
        for idx, state in opt["state"].items():
            for name, value in state.items():
                tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
        meta = {
            "param_groups": [{k: v for k, v in g.items()} for g in opt["param_groups"]],
            "scheduler": self.scheduler.state_dict(),
        }
        return tensors, meta

    def _restore(self, path: Path) -> None:
        """Load everything `_checkpoint_tensors` and the train state saved."""
        tensors, meta = read_checkpoint(path)
        state = dict(meta["train_state"])
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state, strict=True)
        distill_state = {k[8:]: v for k, v in tensors.items() if k.startswith("distill.")}
        self.distiller.load_state_dict(distill_state, strict=True)
        opt_state: dict = {"state": {}, "param_groups": state.pop("param_groups")}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                opt_state["state"].setdefault(int(idx), {})[name] = value
        self.optimizer.load_state_dict(opt_state)
        self.scheduler.load_state_dict(state.pop("scheduler"))
        self.aug_gen.set_state(tensors["rng.specaug"])
        set_rng_state(tensors)
        self.state = TrainState(**state)
        st = self.state
        if st.python_rng is not None:
            random.setstate((3, tuple(st.python_rng), None))
        if st.numpy_rng is not None:
            keys, pos, has_gauss, gauss = st.numpy_rng
            np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))

    def _average_checkpoints(self) -> list[int]:
        """train.average_last: the model becomes the mean of the last K checkpoints' weights,
        is scored on dev (a metrics row with "averaged") and saved as model.safetensors; the
        steps averaged."""
        st, k = self.state, self.cfg.train.average_last
        paths = checkpoints_in(self.out / "checkpoints")[-k:]
        if len(paths) < k:
            log.warning("train.average_last=%d: only %d checkpoints to average", k, len(paths))
        states = [read_checkpoint(p)[0] for p in paths]
        mean = {}
        for key, value in self.model.state_dict().items():
            stacked = torch.stack([s[f"model.{key}"].to(torch.float64) for s in states])
            mean[key] = stacked.mean(0).to(value.dtype) if value.is_floating_point() else value
        self.model.load_state_dict(mean)
        steps = [checkpoint_step(p) for p in paths]
        st.best_dev_wer, st.best_step = self._score_dev(averaged=steps)["dev_wer"], st.step
        self.save_model(self.out / "model.safetensors")
        return steps

    def _finish(self) -> dict:
        st = self.state
        if not self.world.is_main:
            return {}
        self.save_model(self.out / "final.safetensors")
        final_dev_wer = st.history[-1]["dev_wer"] if st.history else None
        averaged = self._average_checkpoints() if self.cfg.train.average_last else None
        if not (self.out / "model.safetensors").exists():
            self.save_model(self.out / "model.safetensors")
        summary = {
            "steps": st.step,
            "epochs": st.epoch,
            "best_dev_wer": st.best_dev_wer,
            "best_step": st.best_step,
            "averaged_steps": averaged,  # the checkpoints model.safetensors is the mean of
            "final_dev_wer": final_dev_wer,
            "bad_steps": st.bad_steps,
            "train_seconds": st.train_seconds,
            "audio_seconds": st.audio_seconds,
            "audio_seconds_per_second": st.audio_seconds / max(1e-9, st.train_seconds),
            "n_params": self.model.n_params(),
            "strategy": self.cfg.distill.strategy,
            "preset": self.cfg.model.preset,
            "precision": self.precision,  # train.precision as run (auto resolved)
        }
        if self.teacher_source is not None and self.teacher_source.request.transcripts:
            summary.update(self.teacher_source.pseudo_labels.summary())
        if self.front_blocks is not None:  # train.cache_frozen: what it held (this process)
            held = sum(x.numel() * x.element_size() for x in self.front_cache.values())
            summary["frozen_cache"] = {"blocks": self.front_blocks, "utterances":
                                       len(self.front_cache), "mb": held / 1e6}  # fmt: skip
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def as_float32(out: ModelOutput) -> ModelOutput:
    """`out` with its logits and hidden states in float32 (a bf16 forward pass gives bfloat16;
    float32 tensors are passed through, not copied)."""
    hidden = tuple(None if h is None else h.float() for h in out.hidden_states)
    return ModelOutput(out.logits.float(), out.lengths, hidden)


def _retime(teacher: TeacherOutput, lengths: torch.Tensor) -> TeacherOutput:
    """The teacher's frame-level outputs stretched like the student's input (data.tempo_range):
    each utterance's valid frames resampled to the student's output `lengths` (B,). Without
    teacher lengths (hidden states alone) they are left to the strategy's whole-batch alignment,
    which one factor per batch keeps close."""
    if teacher.lengths is None:
        return teacher
    old = teacher.lengths.to(lengths.device)
    logits = teacher.logits
    if logits is not None:
        logits = resample_frames(logits, old, lengths)
    hidden = {k: resample_frames(h, old, lengths) for k, h in teacher.hidden.items()}
    return dataclasses.replace(teacher, logits=logits, lengths=lengths, hidden=hidden)


def _number(x: torch.Tensor | float) -> float:
    return x.item() if isinstance(x, torch.Tensor) else float(x)
