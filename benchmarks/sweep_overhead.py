"""Sweep overhead: wall time of a 9-trial sweep (3 weights x 3 temperatures, tiny preset, 100
steps, test-made data) against 9 x one standalone trial (train + dev/test evaluation) plus one
teacher-cache pass, measured in one run.

    .venv/bin/python benchmarks/sweep_overhead.py /tmp/sweep-bench
"""

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, ".")
from asrkd.config import PrepareConfig, SweepConfig, load_config, replace
from asrkd.data.librispeech import prepare_librispeech
from asrkd.evaluation import evaluate
from asrkd.sweep import sweep
from asrkd.sweep_grid import parse_grid
from asrkd.training import train
from tests.helpers import write_librispeech_tree


def main() -> None:
    root = Path(sys.argv[1])
    shutil.rmtree(root, ignore_errors=True)
    tree = write_librispeech_tree(root, {"train": 60, "dev": 10, "test": 10}, n_speakers=4)
    m = prepare_librispeech(
        tree, ["train", "dev", "test"], root / "data", PrepareConfig(), progress=False
    )
    common = [
        f"data.train_cuts={m['train']}",
        f"data.dev_cuts={m['dev']}",
        f"data.test_cuts=[{m['test']}]",
        "data.max_batch_seconds=20",
        "train.eval_every=50",
        "train.checkpoint_every=50",
        "train.warmup_steps=30",
        "model.preset=tiny",
        "train.progress=false",
    ]
    teacher = train(
        load_config(None, common + ["train.max_steps=300", f"train.out_dir={root}/teacher"])
    )
    base = load_config(
        None,
        common
        + [
            "train.max_steps=100",
            "distill.strategy=logit",
            f"teacher.path={teacher}/model.safetensors",
        ],
    )

    def one_trial(name, cache):
        cfg = replace(
            base,
            [
                "distill.weight=0.1",
                "distill.temperature=2",
                f"train.out_dir={root}/{name}",
                f"teacher.cache_dir={root}/{cache}",
            ],
        )
        t0 = time.perf_counter()
        train(cfg)
        t1 = time.perf_counter()
        evaluate(
            Path(cfg.train.out_dir) / "model.safetensors",
            [m["dev"], m["test"]],
            Path(cfg.train.out_dir) / "eval",
            cfg.eval,
            measure=False,
        )
        return t1 - t0, time.perf_counter() - t1

    cold_train, _ = one_trial("single-cold", "cache-single")  # builds the teacher cache
    warm_train, warm_eval = one_trial("single-warm", "cache-single")
    teacher_pass = cold_train - warm_train
    res = {
        "teacher_pass_s": teacher_pass,
        "single_train_s": warm_train,
        "single_eval_s": warm_eval,
        "reference_s": 9 * (warm_train + warm_eval) + teacher_pass,
    }
    grid, _ = parse_grid(["distill.weight=0.1,0.3,0.5", "distill.temperature=1,2,4"])
    for jobs in (1, 2):
        cfg = replace(base, [f"teacher.cache_dir={root}/cache-sweep{jobs}"])
        t0 = time.perf_counter()
        out = sweep(cfg, grid, {}, SweepConfig(jobs=jobs, baseline=False), root / f"sweep-j{jobs}")
        res[f"sweep_jobs{jobs}_s"] = time.perf_counter() - t0
        rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
        res[f"sweep_jobs{jobs}_rows"] = len(rows)
        res[f"sweep_jobs{jobs}_train_s_sum"] = sum(r["train_seconds"] for r in rows)
        res[f"sweep_jobs{jobs}_trial_wall_s_sum"] = sum(r["wall_seconds"] for r in rows)
    print(json.dumps({k: round(v, 2) for k, v in res.items()}, indent=1))


if __name__ == "__main__":
    main()
