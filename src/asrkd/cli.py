"""The `asrkd` command line. It declares no defaults of its own: every value comes from the
config dataclasses (asrkd.config), a YAML file, or `--set key=value`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from asrkd.config import (
    LEXICON_ENGINES,
    PRECISIONS,
    CheckpointError,
    Config,
    ConfigError,
    CorpusConfig,
    EvalConfig,
    ExportConfig,
    PrepareConfig,
    SweepConfig,
    load_config,
)

log = logging.getLogger("asrkd")


def _add_config_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("config", help="YAML config file")
    else:
        p.add_argument("--config", help="YAML file mirroring this command's config dataclass")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. train.lr=1e-3 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrkd", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="manifests + fbank features for a corpus")
    p.add_argument("corpus", choices=["librispeech", "audio"])
    p.add_argument(
        "root",
        help="librispeech: folder holding the part folders (or LibriSpeech/<part>); "
        "audio: a folder of untranscribed audio files in any layout (one part, named after it)",
    )
    p.add_argument("--parts", nargs="+", help="librispeech only: the part folders to prepare")
    p.add_argument("--out", required=True, help="manifest folder")
    _add_config_args(p)

    p = sub.add_parser("download", help="download LibriSpeech parts (needs internet)")
    p.add_argument("corpus", choices=["librispeech"])
    p.add_argument("target", help="download folder")
    p.add_argument("--parts", nargs="+", required=True)
    p.add_argument("--base-url", help="mirror to download from (the API's default otherwise)")

    p = sub.add_parser("corpus", help="build the embedded synthetic corpus (LibriSpeech layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--hours", type=float, help="shorthand for --set hours=H")
    _add_config_args(p)

    for name, help_text in (
        ("train", "train a CTC model"),
        ("distill", "train a student from a teacher"),
    ):
        p = sub.add_parser(name, help=help_text)
        _add_config_args(p, positional=True)
        p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")

    p = sub.add_parser("evaluate", help="WER/CER, size, memory, latency of a model")
    p.add_argument("model", help="model file (.safetensors, or .onnx from asrkd export)")
    p.add_argument("--cuts", nargs="+", required=True, help="cut manifests to score")
    p.add_argument("--out", required=True, help="folder for hypotheses, errors and summary")
    p.add_argument("--threads", type=int, help="shorthand for --set threads=N")
    p.add_argument("--no-measure", action="store_true", help="skip latency and memory")
    _add_config_args(p)

    p = sub.add_parser("sweep", help="hyperparameter study over distillation settings")
    p.add_argument("config", help="YAML run config (the base of every trial)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        required=True,
        metavar="KEY=V1,V2|LO:HI",
        help="values or a range for one config key",
    )
    p.add_argument("--out", required=True, help="sweep folder")
    p.add_argument("--seeds", type=int, help="shorthand for --sweep-set seeds=N")
    p.add_argument("--jobs", type=int, help="shorthand for --sweep-set jobs=N")
    p.add_argument("--storage", help="Optuna storage URL (SQLite in the sweep folder otherwise)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--sweep-set",
        dest="sweep_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a SweepConfig value",
    )

    p = sub.add_parser(
        "report", help="Markdown + plots from a sweep's results.jsonl or a folder of runs"
    )
    p.add_argument("folder", help="sweep folder (or its results.jsonl), or a folder of run folders")

    p = sub.add_parser("transcribe", help="transcribe audio files with a model")
    p.add_argument("model")
    p.add_argument("audio", nargs="+")
    p.add_argument(
        "--lexicon-engine",
        choices=LEXICON_ENGINES,
        help="who searches an exported file's lexicon (default: the search it was exported "
        "with, its export's lexicon_engine)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="a .safetensors model's forward pass, as eval.precision (default: eval.precision's "
        "default, fp32); an ONNX file runs as exported",
    )

    p = sub.add_parser("export", help="export a model file to ONNX for on-device inference")
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument(
        "--out",
        required=True,
        help="ONNX file to write (tokenizer and features inside); a folder for sherpa-onnx",
    )
    p.add_argument("--quantize", action="store_true", help="shorthand for --set quantize=true")
    p.add_argument("--target", help="shorthand for --set target=T (asrkd or sherpa-onnx)")
    _add_config_args(p)

    p = sub.add_parser(
        "cache", help="list asrkd's disk caches (teacher outputs, LMs), or delete unused ones"
    )
    p.add_argument("action", choices=["list", "prune"])
    p.add_argument("roots", nargs="+", help="folders to search, to any depth (e.g. runs)")
    p.add_argument(
        "--unused-days",
        type=float,
        help="prune: delete the entries not used for this many days (required)",
    )
    p.add_argument("--dry-run", action="store_true", help="prune: list, delete nothing")

    p = sub.add_parser("demo", help="the whole story: teacher, students with and without KD")
    _add_config_args(p, positional=True)
    p.add_argument("--librispeech", help="run on a LibriSpeech folder instead of the corpus")
    return parser


def _shorthand(overrides: list[str], **values) -> list[str]:
    return overrides + [f"{k}={v}" for k, v in values.items() if v is not None]


def cmd_prepare(args) -> None:
    from asrkd.data.audio_folder import prepare_audio_folder
    from asrkd.data.librispeech import prepare_librispeech

    if (args.corpus == "librispeech") != bool(args.parts):
        need = "needs --parts" if args.corpus == "librispeech" else "takes no --parts"
        raise ConfigError(f"prepare {args.corpus} {need}")
    cfg = load_config(args.config, args.overrides, PrepareConfig)
    if args.corpus == "audio":
        paths = {Path(args.root).resolve().name: prepare_audio_folder(args.root, args.out, cfg)}
    else:
        paths = prepare_librispeech(args.root, args.parts, args.out, cfg)
    for part, path in paths.items():
        print(f"{part}\t{path}")


def cmd_download(args) -> None:
    from asrkd.data.librispeech import download_librispeech

    kwargs = {"base_url": args.base_url} if args.base_url else {}
    print(download_librispeech(args.target, args.parts, **kwargs))


def cmd_corpus(args) -> None:
    from asrkd.data.corpus import build_corpus

    cfg = load_config(args.config, _shorthand(args.overrides, hours=args.hours), CorpusConfig)
    print(build_corpus(cfg, args.out))


def cmd_train(args) -> None:
    from asrkd.training import train

    cfg = load_config(args.config, args.overrides, Config)
    if args.command == "distill" and cfg.distill.strategies == ("none",):
        raise ConfigError("`asrkd distill` needs distill.strategy other than none")
    out = train(cfg, resume=args.resume)
    print((out / "summary.json").read_text())


def cmd_evaluate(args) -> None:
    from asrkd.ondevice import is_onnx
    from asrkd.precision import limit_kernel_cache

    limit_kernel_cache()  # before any PyTorch computation in this process
    cfg = load_config(args.config, _shorthand(args.overrides, threads=args.threads), EvalConfig)
    if is_onnx(args.model):  # without importing torch or lhotse
        from asrkd.ondevice import evaluate_onnx as evaluate
    else:
        from asrkd.evaluation import evaluate
    summary = evaluate(args.model, args.cuts, args.out, cfg, measure=not args.no_measure)
    print(json.dumps(summary, indent=2))


def cmd_sweep(args) -> None:
    from asrkd.sweep import sweep
    from asrkd.sweep_grid import parse_grid

    base = load_config(args.config, args.overrides, Config)
    extra = _shorthand(args.sweep_overrides, seeds=args.seeds, jobs=args.jobs, storage=args.storage)
    sweep_cfg = load_config(None, extra, SweepConfig)
    grid, ranges = parse_grid(args.grid)
    print(sweep(base, grid, ranges, sweep_cfg, args.out))


def cmd_report(args) -> None:
    from asrkd.report import report

    print(report(args.folder))


def cmd_transcribe(args) -> None:
    from asrkd.ondevice import is_onnx
    from asrkd.precision import limit_kernel_cache

    limit_kernel_cache()  # before any PyTorch computation in this process
    if is_onnx(args.model):  # without importing torch or lhotse
        from asrkd.ondevice import transcribe_onnx_files

        if args.precision:
            raise ConfigError(f"{args.model}: --precision is for .safetensors models; an ONNX "
                              "file runs as exported (int8 with `asrkd export --quantize`)")  # fmt: skip
        texts = transcribe_onnx_files(args.model, args.audio, engine=args.lexicon_engine)
    else:
        from asrkd.transcribe import transcribe_files

        texts = transcribe_files(args.model, args.audio, args.precision or EvalConfig.precision)
    for path, text in texts:
        print(f"{path}\t{text}")


def cmd_export(args) -> None:
    quantize = "true" if args.quantize else None
    extra = _shorthand(args.overrides, quantize=quantize, target=args.target)
    cfg = load_config(args.config, extra, ExportConfig)
    if cfg.target == "sherpa-onnx":
        from asrkd.sherpa import export_sherpa

        out = export_sherpa(args.model, args.out, cfg)
        for path in sorted(out.iterdir()):
            print(f"{path}\t{path.stat().st_size / 1e6:.2f} MB")
        return
    from asrkd.export import export_model

    path = export_model(args.model, args.out, cfg)
    print(f"{path}\t{path.stat().st_size / 1e6:.2f} MB")


def cmd_cache(args) -> None:
    from asrkd.caches import find_caches, human_bytes, prune, table

    if (args.action == "prune") != (args.unused_days is not None):
        raise ConfigError(
            "cache prune needs --unused-days D (entries unused for D days go); "
            "cache list takes none"
        )
    entries = find_caches(args.roots)
    if args.action == "list":
        print(table(entries))
        return
    if args.unused_days < 0:
        raise ConfigError("--unused-days must be >= 0")
    result = prune(entries, args.unused_days * 86400, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for key, word in (("removed", verb), ("in_use", "in use, kept")):
        for e in result[key]:
            print(f"{word}: {e.path} ({human_bytes(e.size)})")
    freed = sum(e.size for e in result["removed"])
    print(
        f"{verb} {len(result['removed'])} of {len(entries)} cache entries, "
        f"{human_bytes(freed)}; {len(result['in_use'])} in use, "
        f"{len(result['recent'])} used in the last {args.unused_days:g} days"
    )


def cmd_demo(args) -> None:
    from asrkd.demo import DemoConfig, run_demo

    cfg = load_config(args.config, args.overrides, DemoConfig)
    run_demo(cfg, librispeech=args.librispeech)


COMMANDS = {
    "prepare": cmd_prepare,
    "download": cmd_download,
    "corpus": cmd_corpus,
    "train": cmd_train,
    "distill": cmd_train,
    "evaluate": cmd_evaluate,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "transcribe": cmd_transcribe,
    "export": cmd_export,
    "cache": cmd_cache,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        COMMANDS[args.command](args)
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"asrkd {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


# Errors a command reports in one line (exit status 2) rather than a traceback, by module.
_ERRORS = (
    ("asrkd.export", "ExportError"),
    ("asrkd.runtime", "TrainingError"),
    ("asrkd.sweep", "SweepError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The error types above, looked up only in modules already imported (a module never
    imported raised nothing), so that a PyTorch-free command (transcribe or evaluate of an
    .onnx file) imports no torch to name them."""
    from asrkd.data.validate import DataError

    errors = [ConfigError, CheckpointError, DataError, ImportError, FileNotFoundError]
    errors += [getattr(sys.modules[m], name) for m, name in _ERRORS if m in sys.modules]
    return tuple(errors)


if __name__ == "__main__":
    sys.exit(main())
