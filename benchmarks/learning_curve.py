"""How a recipe's students' WER moves with the amount of training audio: the same students
(same configs, same steps) retrained on a fraction of the speakers, then scored on the dev and
test manifests with the recipe's decoder.

    .venv/bin/python benchmarks/learning_curve.py --recipe runs/librispeech-whisper \
        --config configs/librispeech-whisper.yaml --variants full-whisper-tiny-enc4-init-seq \
        full-whisper-tiny-enc4-init --fractions 0.25 0.5 --out /tmp/learning-curve

For each fraction f, each manifest a variant trains on (data.train_cuts, data.unlabelled_cuts)
keeps whole speakers, drawn in a seeded order until f of its hours are in (the untranscribed
folder's speakers too, so transcribed and Whisper-labelled audio shrink together). Where the
recipe's teacher cache holds Whisper's transcripts of the full manifest, the subset's cache is
made of the same transcripts (keyed as asrkd.distill.cache keys it), so Whisper does not run
again. Each student trains with `asrkd train <the variant's config.yaml>` at the recipe's steps
(`--parallel` at a time, one thread each; a finished one is kept), and the recipe's own students
are the fraction 1.0. Scoring: greedy and the config's `eval` decoder (its "train" words from
each student's own training manifest, as the recipe scores), the network on one thread.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from lhotse import CutSet

from asrkd.config import EvalConfig, apply_overrides, from_dict
from asrkd.data.dataset import load_cuts, speaker_of
from asrkd.distill.cache import cache_dir_for, cache_key
from asrkd.distill.teachers import TeacherRequest
from asrkd.evaluation import decode_model_file, make_lexicon_decoder
from asrkd.scoring import score
from asrkd.transcribe import open_model_file


def speaker_subset(cuts: CutSet, fraction: float, seed: int) -> tuple[CutSet, int, int, float]:
    """Whole speakers in a seeded order until `fraction` of the hours: (cuts, speakers kept,
    speakers, hours kept)."""
    by: dict[str, list] = {}
    for c in cuts:
        by.setdefault(speaker_of(c), []).append(c)
    order = sorted(by)
    random.Random(seed).shuffle(order)
    total = sum(c.duration for c in cuts)
    kept, hours = [], 0.0
    for s in order:
        if hours * 3600 >= fraction * total:
            break
        kept.append(s)
        hours += sum(c.duration for c in by[s]) / 3600
    keep = set(kept)
    return (
        CutSet.from_cuts([c for c in cuts if speaker_of(c) in keep]),
        len(kept),
        len(order),
        hours,
    )


def speakers_hours(path: str) -> str:
    """'speakers, hours' of a manifest, or '–' for none."""
    if not path:
        return "–"
    cuts = CutSet.from_file(path)
    return f"{len({speaker_of(c) for c in cuts})}, {sum(c.duration for c in cuts) / 3600:.2f}"


def subset_cache(full: Path, subset: Path, subset_cuts: CutSet, teacher_cfg: dict) -> bool:
    """The subset's Whisper-transcript cache from the full manifest's, if that one exists."""
    from asrkd.distill.whisper_teacher import WhisperTeacher

    teacher = WhisperTeacher(
        teacher_cfg["path"], beam=teacher_cfg["beam"], compute_type=teacher_cfg["compute_type"]
    )
    request = TeacherRequest(transcripts=True)
    src = cache_dir_for(full, None, request, 0, teacher.fingerprint())
    if not (src / "index.json").is_file():
        return False
    index = json.loads((src / "index.json").read_text())
    if index["key"] != cache_key(teacher, full, request, 0) or index.get("hidden_layers"):
        return False
    ids = set(subset_cuts.ids)
    index["entries"] = {k: v for k, v in index["entries"].items() if k in ids}
    index["texts"] = {k: v for k, v in index["texts"].items() if k in ids}
    index["key"] = cache_key(teacher, subset, request, 0)
    dst = cache_dir_for(subset, None, request, 0, teacher.fingerprint())
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    (dst / "index.json").write_text(json.dumps(index))
    return True


def prepare(args, variant: str, fraction: float) -> tuple[list[str], Path]:
    """The overrides that retrain `variant` on `fraction` of its speakers, and its out_dir."""
    cfg = yaml.safe_load((Path(args.recipe) / "runs" / variant / "config.yaml").read_text())
    folder = Path(args.out) / f"f{round(100 * fraction)}"
    folder.mkdir(parents=True, exist_ok=True)
    sets = []
    for key in ("train_cuts", "unlabelled_cuts"):
        full = cfg["data"].get(key)
        if not full:
            continue
        full = Path(full)
        target = folder / full.name
        cuts = CutSet.from_file(full).to_eager()
        sub, n_kept, n_all, hours = speaker_subset(cuts, fraction, args.seed)
        print(f"{target}: {n_kept} of {n_all} speakers, {hours:.2f} h")
        if not target.is_file():
            sub.to_file(target)
        if cfg["distill"]["strategy"] != "none" and cfg["teacher"]["kind"] == "whisper":
            reused = subset_cache(full, target, sub, cfg["teacher"])
            print(f"{target}: Whisper's transcripts {'reused' if reused else 'computed afresh'}")
        sets.append(f"data.{key}={target}")
    out_dir = Path(args.out) / f"{variant}-f{round(100 * fraction)}"
    sets += [f"train.out_dir={out_dir}", "train.progress=false"]
    return sets, out_dir


def train_all(args, jobs: list[tuple[str, list[str], Path]]) -> None:
    """`asrkd train` for each job not yet finished, `--parallel` at a time."""
    asrkd = str(Path(sys.executable).parent / "asrkd")
    pending = [j for j in jobs if not (j[2] / "model.safetensors").is_file()]
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            config, sets, out_dir = pending.pop(0)
            out_dir.mkdir(parents=True, exist_ok=True)
            cmd = [asrkd, "train", config] + [a for s in sets for a in ("--set", s)]
            log = (out_dir / "train.log").open("w")
            running.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        running[0].wait()
        if running[0].returncode:
            raise SystemExit(f"{running[0].args}: exit {running[0].returncode}")
        running.pop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", required=True, help="a real-speech recipe's out_dir")
    ap.add_argument("--config", required=True, help="the recipe's YAML (its eval: part)")
    ap.add_argument("--variants", nargs="+", required=True, help="run names under runs/")
    ap.add_argument("--fractions", nargs="+", type=float, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--dev", default="", help="default: the runs' data.dev_cuts")
    ap.add_argument("--test", default="", help="default: the runs' first data.test_cuts")
    args = ap.parse_args()
    recipe = Path(args.recipe)
    rows, jobs = [], []
    for variant in args.variants:
        config = recipe / "runs" / variant / "config.yaml"
        rows.append((variant, 1.0, recipe / "runs" / variant))
        for fraction in args.fractions:
            sets, out_dir = prepare(args, variant, fraction)
            rows.append((variant, fraction, out_dir))
            jobs.append((str(config), sets, out_dir))
    train_all(args, jobs)

    data = yaml.safe_load(Path(args.config).read_text())
    eval_data = dict(data.get("eval", data))
    apply_overrides(eval_data, ["decoder=lexicon"])
    eval_data.pop("lexicon_cuts", None)  # each student's own training manifest
    eval_cfg = from_dict(EvalConfig, eval_data)
    torch.set_num_threads(1)
    cfg = yaml.safe_load((recipe / "runs" / args.variants[0] / "config.yaml").read_text())
    sets = {
        "dev": load_cuts(args.dev or cfg["data"]["dev_cuts"]),
        "test": load_cuts(args.test or cfg["data"]["test_cuts"][0]),
    }
    print(
        "\n| student | fraction | transcribed: speakers, h | untranscribed: speakers, h "
        "| dev greedy | dev lexicon | test greedy | test lexicon |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant, fraction, out_dir in rows:
        run = yaml.safe_load((out_dir / "config.yaml").read_text())["data"]
        path = out_dir / "model.safetensors"
        model = open_model_file(path, 1)
        lexicon = make_lexicon_decoder(eval_cfg, model, path)
        wers = []
        for cuts in sets.values():
            greedy, lex = decode_model_file(model, cuts, 60.0, lexicon)
            wers += [score(greedy)["wer"], score(lex)["wer"]]
        print(
            f"| {variant} | {fraction:g} | {speakers_hours(run['train_cuts'])} "
            f"| {speakers_hours(run.get('unlabelled_cuts', ''))} | "
            + " | ".join(f"{100 * w:.2f} %" for w in wers)
            + " |"
        )


if __name__ == "__main__":
    main()
