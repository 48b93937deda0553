"""The table and Markdown report of `asrkd demo` (the rows: asrkd.demo_scoring; plots:
asrkd.demo_plots; targets: asrkd.demo_targets)."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from asrkd import __version__, demo_scoring
from asrkd.config import LM_ORDERS, DemoConfig, parse_bigrams, to_dict
from asrkd.demo_plots import plot
from asrkd.demo_targets import external_target_lines, pct, target_lines, times
from asrkd.files import code_fingerprint


def teacher_transcript_lines(rows: list[dict]) -> list[str]:
    """What sequence KD left out of each student's teacher transcripts (the run's summary.json:
    pseudo_labels_*), so that the table says how much of the teacher's labelling was used."""
    lines = []
    for r in rows:
        t = r.get("teacher_transcripts")
        if not t or r["variant"].endswith("-int8"):
            continue
        far = (
            f"{t['over_max_wer']} of {t['checked']} checked against the utterance's transcript "
            "were too far from it (distill.max_pseudo_wer)"
            if t["checked"]
            else "none checked against a transcript (distill.max_pseudo_wer off)"
        )
        where = f"; listed in `{t['listed_in']}`" if t.get("listed_in") else ""
        lines.append(
            f"- {r['name']}: {far}; {_count(t, 'unmappable')} could not be written in the "
            f"student's units; repeating themselves (distill.max_pseudo_compression): "
            f"{_count(t, 'repetitive')}; longer than the student's CTC can align: "
            f"{_count(t, 'too_long')}{where}"
        )
    if not lines:
        return []
    return ["Sequence KD's teacher transcripts left out:", "", *lines, ""]


def _count(transcripts: dict, reason: str) -> str:
    """How many teacher transcripts a run left out for `reason` (None: not checked)."""
    n = transcripts.get(reason)
    return "not checked (off, or trained before asrkd checked it)" if n is None else str(n)


def table_lines(rows: list[dict]) -> list[str]:
    noisy = any(r.get("noisy_wer") is not None for r in rows)
    head = (
        "| model | params | MB | WER | CER | greedy WER |"
        + (" WER noisy |" if noisy else "")
        + " peak MB | latency ms | RTF | WER vs baseline | CER vs baseline | size vs teacher "
        "| speed vs teacher |"
    )
    lines = [head, "|" + "---|" * (13 + noisy)]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f} M | {r['mb']:.1f} | {r['wer']:.1%} "
            f"| {r['cer']:.1%} | {r['greedy_wer']:.1%} |"
            + (f" {pct(r.get('noisy_wer'), digits=1)} |" if noisy else "")
            + f" {r['memory_mb']:.0f} | {r['latency_ms']:.1f} | {r['rtf']:.4f} "
            f"| {pct(r['wer_change'], True)} | {pct(r['cer_change'], True)} "
            f"| {pct(r['size_vs_teacher'])} | {times(r.get('speed_vs_teacher'))} |"
        )
    return lines


def print_table(rows: list[dict]) -> None:
    print()
    for line in table_lines(rows):
        print(line)


def decoding_text(cfg: DemoConfig, rows: list[dict]) -> str:
    if cfg.eval.decoder == "greedy":
        return "greedy CTC best path (no lexicon, no language model)"
    oov = next((r["oov_rate"] for r in rows if r.get("oov_rate") is not None), None)
    words = "the words of the student's own training transcripts"
    if cfg.eval.vocabulary != "train":
        words = f"the vocabulary `{cfg.eval.vocabulary}` (asrkd.lexicon.vocabulary_lm)"
    prune = f", tokens above log-prob {cfg.eval.token_prune:g}"
    if cfg.eval.blank_penalty:
        prune += f", blank's log-prob lowered by {cfg.eval.blank_penalty:g}"
    if cfg.eval.arpa:
        order = LM_ORDERS[cfg.eval.lm_order]
        return (
            f"a lexicon beam search (beam {cfg.eval.beam}{prune}) over the words of the ARPA LM "
            f"`{cfg.eval.arpa}` with its {order} (weight {cfg.eval.lm_weight:g}, word bonus "
            f"{cfg.eval.word_bonus:g}; the same decoder for every model)"
        )
    sources = {
        "train": "the student's own transcripts",
        "books": "English books (Google Books, symspellpy)",
        "sphinx": "CMU Sphinx's US English LM (pocketsphinx)",
    }
    chain = " over ".join(sources[s] for s in parse_bigrams(cfg.eval.bigrams))
    pairs = f"word pairs of {chain}, backing off to the unigram"
    lm = {
        1: "unigram LM",
        2: f"bigram LM ({pairs})",
        3: f"trigram LM (CMU Sphinx's US English word triples over a bigram of the {pairs})",
    }[cfg.eval.lm_order]
    return (
        f"a lexicon beam search (beam {cfg.eval.beam}{prune}) over {words} with a {lm} "
        f"(weight {cfg.eval.lm_weight:g}, word bonus {cfg.eval.word_bonus:g}; "
        f"{'' if oov is None else f'{oov:.1%} of test words are outside it; '}"
        "the same decoder for every model)"
    )


def rows_text(cfg: DemoConfig, rows: list[dict]) -> str:
    """What the rows of a recipe with an external (Whisper) teacher are, and how they were
    measured."""
    teacher = ", ".join(f"`{r}`" for r in cfg.teacher_runtimes)
    noisy = (
        f"WER noisy: the same test utterances with {'/'.join(cfg.noise_types)} noise at "
        f"{cfg.noise_snr_db:g} dB SNR (seed {cfg.noise_seed}; for the teacher with its first runtime "
        "only). "
        if cfg.noise_snr_db > 0
        else ""
    )
    return (
        f"Rows: the teacher `{cfg.run.teacher.path}` run by {teacher} (greedy, batch 1; its WER "
        "is that of its own decoder, text normalised like its pseudo-labels); then the same "
        f"student in situation (a) `full` (every transcript of the train speakers) and (b) "
        f"`partial` (transcripts for {cfg.partial_fraction:.0%} of them, the rest as audio only "
        "the teacher labels; its baseline sees only the transcribed part). Distilled students "
        "(sequence or hidden KD) also hear the untranscribed folder"
        f"{f' `{cfg.unlabelled_audio}`' if cfg.unlabelled_audio else ''}. Variants: `none` = "
        "no distillation, random init (the baseline); `init` = the teacher's front end and "
        "evenly spaced encoder blocks copied in (blocks above the teacher's depth start as the "
        "identity), CTC only; `seq` = + sequence KD on the "
        "teacher's transcripts (filtered by distill.max_pseudo_wer where a transcript exists, "
        "and of loops and of transcripts the student's CTC cannot align everywhere); "
        "`hidden` = + hidden-state KD from its encoder; every student of a situation has the "
        f"same number of steps{precision_text(rows)}. Student WER/CER decoded by "
        f"{decoding_text(cfg, rows)}; greedy "
        f"WER = best path without lexicon or LM. {noisy}MB = fp32 weights (int8 row: the whole "
        "int8 ONNX file); peak MB = resident memory added by loading the model and the decoder "
        "its WER is scored with and transcribing utterances one at a time in a fresh process "
        "(the teacher's: loading and transcribing); latency and RTF at batch 1 on "
        f"{cfg.eval.threads or 'all'} threads, each model timed alone in a fresh process as "
        "`asrkd transcribe` runs it: a student's is its network on its stored features "
        "(their computation is timed in the next line) and the decoder its WER is scored with "
        f"({search_text(cfg)}), the teacher's the whole transcription"
        f"{eval_precision_text(rows)}; "
        "speed vs teacher = the fastest teacher row's RTF over the row's."
    )


def eval_precision_text(rows: list[dict]) -> str:
    """How the model files' forward pass computed in scoring and timing (eval.precision as
    run), for the rows' explanation: nothing when in float32."""
    bf16 = [r["name"] for r in rows if r.get("eval_precision") == "bf16"]
    if not bf16:
        return ""
    return (
        f"; {', '.join(f'`{n}`' for n in bf16)} scored and timed with the forward pass in "
        "bfloat16 (eval.precision; ONNX files as exported)"
    )


def precision_text(rows: list[dict]) -> str:
    """How the students' training forward pass computed (train.precision as run), for the
    rows' explanation: nothing when every student trained in float32."""
    students = [r for r in rows if r.get("train_precision")]
    used = {r["train_precision"] for r in students}
    if used <= {"fp32"}:
        return ""
    if used == {"bf16"}:
        return ", its forward pass in bfloat16 (train.precision; weights and losses float32)"
    bf16 = ", ".join(f"`{r['name']}`" for r in students if r["train_precision"] == "bf16")
    return f"; the forward pass in bfloat16 (train.precision) for {bf16}, else float32"


def search_text(cfg: DemoConfig) -> str:
    """How the students' text is searched, for the rows' explanation."""
    if cfg.eval.decoder == "greedy":
        return "greedy CTC, no search"
    engine = {"flashlight": "flashlight-text's C++ search", "python": "asrkd's Python search"}
    return f"the lexicon beam search, {engine[cfg.eval.lexicon_engine]}"


def decoder_lines(rows: list[dict], cfg: DemoConfig) -> list[str]:
    """The decoder's part of the student rows' RTF and peak memory (in those columns already)."""
    students = [r for r in rows if r["scenario"] != "teacher"]
    parts = [r["decoder_rtf"] / r["rtf"] for r in students if r.get("decoder_rtf") and r["rtf"] > 0]
    tables = [r["decoder_mb"] for r in students if r.get("decoder_mb") is not None]
    lines = []
    if parts:
        lines.append(
            f"Of a student row's RTF, its decoder takes {min(parts):.0%}-{max(parts):.0%} (the "
            "rest is the network)."
        )
    if tables and max(tables) >= 1:
        lines.append(
            f"Of a student row's peak MB, its decoder's tables (words, LM) take "
            f"{min(tables):.0f}-{max(tables):.0f} MB (resident growth of making them)."
        )
    lines += lm_cache_lines(cfg)
    return [*lines, ""] if lines else []


def _span(values: list[float], fmt: str) -> str:
    """The values' range in format fmt, "low-high", or one value where both print alike."""
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}-{high}"


def lm_cache_lines(cfg: DemoConfig) -> list[str]:
    """The decoder LMs the rows read from eval.lm_cache (asrkd.lexicon_cache), as its entries
    for cfg's LM fields and this code record them; nothing without a cache."""
    from asrkd.lexicon_cache import LM_FIELDS, LM_SOURCES, cached_entries

    folder = Path(cfg.eval.lm_cache) if cfg.eval.lm_cache else None
    if folder is None or cfg.eval.decoder == "greedy" or not folder.is_dir():
        return []
    wanted = {k: v for k, v in to_dict(cfg.eval).items() if k in LM_FIELDS and k != "arpa"}
    wanted["code"] = code_fingerprint(LM_SOURCES)
    built = [
        (record["build_s"], arpa.stat().st_size / 1e6)
        for record, arpa in cached_entries(folder)
        if all(record["inputs"].get(k) == v for k, v in wanted.items())
    ]
    if not built:
        return []
    seconds = _span([b[0] for b in built], ".1f")
    sizes = _span([b[1] for b in built], ".0f")
    return [
        (
            f"The students' decoder LMs were built once each ({len(built)}: one per set of "
            f"training transcripts; {seconds} s to build, ARPA text {sizes} MB) into "
            f"`{folder}` (eval.lm_cache); every row's scoring, timing and memory probe reads "
            "its LM from there, as the int8 file's decoder reads the LM inside the file, so no "
            "row's peak MB holds the building's."
        )
    ]


def sherpa_lines(sherpa: dict | None, rows: list[dict]) -> list[str]:
    """The delivered student as sherpa-onnx runs it, beside asrkd's greedy score of its int8
    ONNX file (the same weights; sherpa-onnx decodes greedily)."""
    if sherpa is None:
        return []
    int8 = next((r for r in rows if r["name"] == f"{sherpa['name']}-int8"), None)
    same = f" (asrkd's greedy WER of its int8 ONNX file: {int8['greedy_wer']:.1%})" if int8 else ""
    return [
        "## Delivered through sherpa-onnx",
        "",
        (
            f"`{sherpa['dir']}` (`asrkd export --target sherpa-onnx --quantize`, {sherpa['mb']:.1f} "
            f"MB), decoded by sherpa-onnx itself (greedy, 1 thread): test WER {sherpa['wer']:.1%}, "
            f"CER {sherpa['cer']:.1%}{same}; RTF {sherpa['rtf']:.4f} including its own features."
        ),
        "",
    ]


def write_report(
    rows,
    out: Path,
    cfg: DemoConfig,
    timings: dict,
    librispeech,
    sherpa: dict | None = None,
    features: dict | None = None,
) -> Path:
    plots = plot(rows, out)
    data = (
        f"LibriSpeech folder {librispeech}"
        if librispeech
        else (
            f"the embedded synthetic corpus ({cfg.corpus.hours} h, seed {cfg.corpus.seed}; "
            "test voices unseen in training)"
        )
    )
    lines = [
        "# asrkd demo report",
        "",
        (
            f"Data: {data}. Machine: {os.cpu_count()} CPU cores, {platform.machine()}, "
            f"date {datetime.date.today().isoformat()}, asrkd {__version__} (code "
            f"{demo_scoring.code_stamp()}). Total wall time "
            f"{timings['total'] / 60:.1f} min (stages reused from an earlier run count ~0 s)."
        ),
        "",
        rows_text(cfg, rows)
        if cfg.external_teacher
        else (
            "Rows: the teacher; the student in situation (a) `full` (every transcript) and (b) "
            f"`partial` (transcripts for {cfg.partial_fraction:.0%} of the train speakers, the rest "
            "as untranscribed audio; its baseline sees only the transcribed part). Strategy `none` "
            "is the student trained without distillation; every student of a situation has the same "
            f"number of steps. WER/CER on test voices, decoded by {decoding_text(cfg, rows)}; "
            "greedy WER = best-path decoding without lexicon or LM; MB = fp32 weights, or for "
            "the `-int8` row the whole int8 ONNX file `asrkd export` wrote for the distilled "
            "student with the best dev WER (decoded as the test set is; lexicon included; run "
            "by onnxruntime); size = MB relative to the teacher; memory = peak resident memory "
            "added by loading the model and its decoder and transcribing utterances one at a "
            "time in a fresh process (activations, buffers and the decoder's tables dominate it "
            "at these sizes); latency at batch size 1, network and decoder."
        ),
        "",
        *table_lines(rows),
        "",
        *(
            [
                (
                    f"Features ({features['kind']}, numpy, from audio, one thread) cost RTF "
                    f"{features['rtf']:.4f} more for every student row."
                ),
                "",
            ]
            if features
            else []
        ),
        *decoder_lines(rows, cfg),
        *teacher_transcript_lines(rows),
        "## Targets",
        "",
        *(external_target_lines(rows) if cfg.external_teacher else target_lines(rows)),
        "",
        *sherpa_lines(sherpa, rows),
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
        "## Stage times (s)",
        "",
        *[f"- {k}: {v:.0f}" for k, v in timings.items()],
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
