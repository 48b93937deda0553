"""sherpa-onnx export and the PyTorch-free path, on real speech (test-other).

The model under test is a tiny Conformer-CTC overfit for ~150 steps (~15 s on one thread) on the
12 shortest utterances of test-other: its outputs are confident and far from all-blank (it
transcribes those 12 almost perfectly, the other 88 as confident gibberish), which is what a
runtime-parity test needs — features, network and decoding of two runtimes must agree on it.
It is not an accuracy claim: no usable recogniser trains in a test. The Whisper-encoder tests
do the same with the `whisper-test-student` preset on Whisper's log-mel (~6 s), exported as
sherpa-onnx's Moonshine type with the features and the greedy search inside the graphs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrkd.config import ExportConfig, FeatureConfig
from asrkd.data.audio import fbank_extractor, knf_fbank
from asrkd.data.text import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, TRAIN_STEPS = 12, 150


def _test_other() -> Path:
    root = os.environ.get("ASRKD_LIBRISPEECH_DIR")
    if not root:
        pytest.skip("set ASRKD_LIBRISPEECH_DIR to a LibriSpeech folder with test-other")
    for part in (Path(root) / "test-other", Path(root) / "LibriSpeech" / "test-other"):
        if part.is_dir():
            return part
    pytest.skip(f"{root} has no test-other")


def _transcripts(part: Path) -> dict[str, str]:
    out = {}
    for path in part.glob("*/*/*.trans.txt"):
        for line in path.read_text().splitlines():
            utt, text = line.split(" ", 1)
            out[utt] = text
    return out


@pytest.fixture(scope="session")
def test_other(tmp_path_factory) -> tuple[list[Path], Path]:
    """(flac files sorted by (duration, name), a cut manifest of them without features)."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    part = _test_other()
    texts = _transcripts(part)
    files = sorted(part.glob("*/*/*.flac"), key=lambda f: (sf.info(str(f)).duration, f.name))
    recs = [Recording.from_file(f, recording_id=f.stem) for f in files]
    sups = [SupervisionSegment(r.id, r.id, 0.0, r.duration, text=texts[r.id].lower()) for r in recs]
    cuts = CutSet.from_manifests(RecordingSet.from_recordings(recs), SupervisionSet(sups))
    cuts = CutSet.from_cuts(c.with_id(c.recording_id) for c in cuts)
    path = tmp_path_factory.mktemp("test_other") / "cuts_test-other.jsonl.gz"
    cuts.to_file(path)
    return files, path


def overfit(model, feats: list, targets: list, steps: int, tok, features, path: Path) -> Path:
    """Full-batch CTC training of `model` on (feats, targets) for `steps` AdamW steps on one
    thread, saved at `path` (returned) with its tokenizer and feature settings."""
    import torch

    from asrkd.models.checkpoint import save_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    feat_lens = torch.tensor([len(x) for x in feats])
    padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        out = model(padded, feat_lens)
        loss = torch.nn.functional.ctc_loss(
            out.logits.log_softmax(-1).transpose(0, 1),
            torch.cat(targets),
            out.lengths,
            torch.tensor([len(t) for t in targets]),
            zero_infinity=True,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    save_checkpoint(path, model.eval(), tok, features=features.__dict__)
    return path


@pytest.fixture(scope="session")
def overfit_model(test_other, tmp_path_factory) -> Path:
    """model.safetensors of a tiny Conformer-CTC overfit on the N_TRAIN shortest utterances."""
    import torch

    from asrkd.models.conformer import ConformerCTC, ConformerDims

    files, _ = test_other
    texts = _transcripts(files[0].parents[2])
    torch.manual_seed(0)
    tok, features = Tokenizer(), FeatureConfig()
    extract = fbank_extractor(features)
    feats = [
        torch.from_numpy(extract.extract(sf.read(str(f), dtype="float32")[0], 16000))
        for f in files[:N_TRAIN]
    ]
    targets = [torch.tensor(tok.encode(texts[f.stem])) for f in files[:N_TRAIN]]
    dims = ConformerDims(
        vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=2, ff_mult=2,
        conv_kernel=7, subsampling_channels=32, dropout=0.0,
    )  # fmt: skip
    model = ConformerCTC(dims)
    path = tmp_path_factory.mktemp("overfit") / "model.safetensors"
    return overfit(model, feats, targets, TRAIN_STEPS, tok, features, path)


@pytest.fixture(scope="session")
def sherpa_folder(overfit_model, tmp_path_factory) -> Path:
    """export_sherpa's fp32 folder of overfit_model."""
    from asrkd.sherpa import export_sherpa

    out = tmp_path_factory.mktemp("sherpa") / "fp32"
    return export_sherpa(overfit_model, out, ExportConfig(target="sherpa-onnx"))


def pytorch_greedy(model_path: Path, files: list[Path]) -> dict[str, str]:
    """utterance id -> asrkd's greedy transcript of each file by the model (one thread)."""
    import torch

    from asrkd.transcribe import Transcriber

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = Transcriber(model_path)
    out = {f.stem: model(sf.read(str(f), dtype="float32")[0]) for f in files}
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def torch_greedy(overfit_model, test_other) -> dict[str, str]:
    """utterance id -> asrkd's greedy transcript (PyTorch path: lhotse features, eager model)."""
    return pytorch_greedy(overfit_model, test_other[0])


@pytest.mark.librispeech
def test_kaldi_native_fbank_matches_the_training_features(test_other) -> None:
    """The PyTorch-free (and sherpa-onnx's) front end gives lhotse's frames, to ~2e-3."""
    features = FeatureConfig()
    extract = fbank_extractor(features)
    for f in test_other[0][::20]:
        samples = sf.read(str(f), dtype="float32")[0]
        ref, ours = extract.extract(samples, 16000), knf_fbank(samples, features)
        assert ours.shape == ref.shape and ours.dtype == np.float32
        assert np.abs(ours - ref).max() < 5e-3


@pytest.mark.librispeech
def test_sherpa_onnx_transcribes_as_asrkd(sherpa_folder, test_other, torch_greedy, tmp_path):
    """sherpa-onnx's own recogniser on the exported folder: the same greedy words as asrkd for
    >= 99 % of test-other and WER within 0.2 points."""
    pytest.importorskip("sherpa_onnx")
    from asrkd.scoring import score
    from asrkd.sherpa import evaluate_sherpa

    folder = sherpa_folder
    assert {p.name for p in folder.iterdir()} == {"model.onnx", "tokens.txt", "README.txt"}
    assert (folder / "tokens.txt").read_text().splitlines()[:2] == ["<blk> 0", "\u2581 1"]
    summary = evaluate_sherpa(folder, [test_other[1]], tmp_path / "eval")
    hyps = (tmp_path / "eval" / "hyps-test-other-sherpa-greedy.txt").read_text().splitlines()
    rows = [line.split("\t") for line in hyps]
    assert len(rows) == len(test_other[0])
    same = sum(hyp.split() == torch_greedy[cut].split() for cut, _, hyp in rows)
    assert same >= 0.99 * len(rows)
    ours = score([(cut, ref, torch_greedy[cut]) for cut, ref, _ in rows])
    assert abs(summary["sets"]["test-other"]["wer"] - ours["wer"]) <= 0.002
    trained = {f.stem for f in test_other[0][:N_TRAIN]}
    assert score([r for r in rows if r[0] in trained])["wer"] < 0.2  # non-trivial outputs


BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "lhotse"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, _Block())
from asrkd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _asrkd_without_torch(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.librispeech
def test_transcribe_and_evaluate_without_torch(sherpa_folder, test_other, torch_greedy, tmp_path):
    """`asrkd transcribe` and `asrkd evaluate` on an exported .onnx file (the sherpa-onnx
    folder's: it carries asrkd's metadata too) in a process where `import torch` and
    `import lhotse` fail give the PyTorch path's transcripts."""
    onnx = sherpa_folder / "model.onnx"
    files = [str(f) for f in test_other[0][:3]]
    out = _asrkd_without_torch("transcribe", str(onnx), *files)
    got = dict(line.split("\t") for line in out.splitlines())
    assert got == {f: torch_greedy[Path(f).stem] for f in files}
    _asrkd_without_torch(
        "evaluate", str(onnx), "--cuts", str(test_other[1]), "--out", str(tmp_path / "ev"),
        "--no-measure", "--threads", "1",
    )  # fmt: skip
    hyps = (tmp_path / "ev" / "hyps-test-other-greedy.txt").read_text().splitlines()
    rows = [line.split("\t") for line in hyps]
    assert len(rows) == len(test_other[0])
    assert all(hyp == torch_greedy[cut] for cut, _, hyp in rows)


@pytest.mark.librispeech
def test_cli_exports_an_int8_folder_sherpa_onnx_runs(overfit_model, test_other, tmp_path):
    """`asrkd export --target sherpa-onnx --quantize`: model.int8.onnx that sherpa-onnx loads,
    and that asrkd's own PyTorch-free path runs too."""
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    from asrkd.cli import main
    from asrkd.ondevice import OnnxRecognizer
    from asrkd.sherpa import sherpa_text

    out = tmp_path / "int8"
    assert main(["export", str(overfit_model), "--out", str(out), "--target", "sherpa-onnx",
                 "--quantize"]) == 0  # fmt: skip
    assert {p.name for p in out.iterdir()} == {"model.int8.onnx", "tokens.txt", "README.txt"}
    rec = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model=str(out / "model.int8.onnx"), tokens=str(out / "tokens.txt"), num_threads=1
    )
    samples = sf.read(str(test_other[0][0]), dtype="float32")[0]
    stream = rec.create_stream()
    stream.accept_waveform(16000, samples)
    rec.decode_stream(stream)
    ours = OnnxRecognizer(out / "model.int8.onnx", threads=1)(samples)
    assert sherpa_text(stream.result.text) == " ".join(ours.split()) != ""


def test_tokens_txt_of_word_pieces_matches_bpe_model() -> None:
    """tokens.txt of a sentencepiece tokenizer: <blk> at 0 and every other line the piece that
    bpe.model gives that id, so sherpa-onnx's hotword encoding finds the model's outputs."""
    import base64

    import sentencepiece as spm

    from asrkd.data.text import train_sentencepiece
    from asrkd.sherpa import tokens_txt

    tok = train_sentencepiece(["the cat sat on the mat", "a hat and a cat"] * 4, 30)
    proc = spm.SentencePieceProcessor()
    proc.LoadFromSerializedProto(base64.b64decode(tok.model))
    lines = [line.rsplit(" ", 1) for line in tokens_txt(tok).splitlines()]
    assert [int(i) for _, i in lines] == list(range(tok.vocab_size))
    assert [s for s, _ in lines] == [proc.IdToPiece(i) for i in range(tok.vocab_size)]


# ---------------------------------------------------------------------------------------------
# Whisper-encoder students: sherpa-onnx's Moonshine type, Whisper's log-mel and greedy CTC inside.

WHISPER_STEPS = 250
MOONSHINE_FILES = {"preprocess.onnx", "decode.onnx", "tokens.txt", "README.txt"}


@pytest.fixture(scope="session")
def whisper_model(test_other, tmp_path_factory) -> Path:
    """model.safetensors of a `whisper-test-student` overfit on the N_TRAIN shortest
    utterances, on Whisper's log-mel (the features `asrkd prepare` stores for it)."""
    import torch

    from asrkd.data.whisper_features import log_mel
    from asrkd.models import build_model

    files, _ = test_other
    texts = _transcripts(files[0].parents[2])
    torch.manual_seed(0)
    tok, features = Tokenizer(), FeatureConfig(kind="whisper")
    feats = [
        torch.from_numpy(log_mel(sf.read(str(f), dtype="float32")[0])) for f in files[:N_TRAIN]
    ]
    targets = [torch.tensor(tok.encode(texts[f.stem])) for f in files[:N_TRAIN]]
    model = build_model("whisper-test-student", tok.vocab_size, features.n_mels, 0.0)
    path = tmp_path_factory.mktemp("whisper") / "model.safetensors"
    return overfit(model, feats, targets, WHISPER_STEPS, tok, features, path)


@pytest.fixture(scope="session")
def whisper_folders(whisper_model, tmp_path_factory) -> dict[str, Path]:
    """{"fp32": ..., "int8": ...}: `asrkd export --target sherpa-onnx [--quantize]` folders."""
    from asrkd.cli import main

    root = tmp_path_factory.mktemp("whisper-sherpa")
    for name, flags in (("fp32", []), ("int8", ["--quantize"])):
        args = ["export", str(whisper_model), "--out", str(root / name), "--target", "sherpa-onnx"]
        assert main(args + flags) == 0
    return {"fp32": root / "fp32", "int8": root / "int8"}


@pytest.fixture(scope="session")
def whisper_torch_greedy(whisper_model, test_other) -> dict[str, str]:
    """utterance id -> asrkd's greedy transcript (PyTorch: numpy Whisper log-mel, eager model)."""
    return pytorch_greedy(whisper_model, test_other[0])


def _sherpa_rows(folder: Path, cuts: Path, out: Path) -> list[tuple[str, str, str]]:
    """(cut, reference, hypothesis) of evaluate_sherpa's greedy hypotheses file."""
    from asrkd.sherpa import evaluate_sherpa

    evaluate_sherpa(folder, [cuts], out)
    lines = (out / "hyps-test-other-sherpa-greedy.txt").read_text().splitlines()
    return [tuple(line.split("\t")) for line in lines]


def _parity(rows: list[tuple[str, str, str]], ours: dict[str, str]) -> tuple[int, float, float]:
    """(utterances whose words equal, sherpa's WER, ours) over sherpa's (cut, ref, hyp) rows."""
    from asrkd.scoring import score

    same = sum(hyp.split() == ours[cut].split() for cut, _, hyp in rows)
    mine = score([(cut, ref, ours[cut]) for cut, ref, _ in rows])["wer"]
    return same, score(rows)["wer"], mine


@pytest.mark.librispeech
def test_sherpa_onnx_runs_whisper_student_as_asrkd(
    whisper_folders, test_other, whisper_torch_greedy, tmp_path
):
    """Runtime parity: sherpa-onnx's own recogniser (Moonshine type: waveform in, Whisper's
    log-mel and greedy CTC in the graphs) on the exported fp32 folder gives asrkd's PyTorch
    greedy words for >= 99 % of test-other (measured 100 %), WER within 0.2 points.
    int8 weights are not fp32's, so PyTorch is not the int8 folder's reference: sherpa-onnx
    on it gives the words of onnxruntime on the same graphs (asrkd.sherpa_waveform.run_folder)
    for >= 99 % (measured 100 %), and those of asrkd's onnxruntime path (numpy features into the
    int8 encoder) for >= 95 % (measured 98 %: features 1 ulp apart can move an activation across
    an int8 step, and this test model's words on unseen audio are gibberish on a knife edge)."""
    pytest.importorskip("sherpa_onnx")
    from asrkd.ondevice import OnnxRecognizer
    from asrkd.scoring import score
    from asrkd.sherpa import exported_metadata
    from asrkd.sherpa_waveform import run_folder

    fp32, int8 = whisper_folders["fp32"], whisper_folders["int8"]
    assert {p.name for p in fp32.iterdir()} == MOONSHINE_FILES | {"encode.onnx"}
    assert {p.name for p in int8.iterdir()} == MOONSHINE_FILES | {"encode.int8.onnx"}
    assert exported_metadata(fp32)[0] == exported_metadata(int8)[0] == "moonshine"
    assert "from_moonshine" in (fp32 / "README.txt").read_text()
    n = len(test_other[0])
    rows = _sherpa_rows(fp32, test_other[1], tmp_path / "fp32")
    same, theirs, ours = _parity(rows, whisper_torch_greedy)
    assert len(rows) == n and same >= 0.99 * n, same
    assert abs(theirs - ours) <= 0.002
    trained = {f.stem for f in test_other[0][:N_TRAIN]}
    assert score([r for r in rows if r[0] in trained])["wer"] < 0.3  # non-trivial outputs

    rows = _sherpa_rows(int8, test_other[1], tmp_path / "int8")
    audio = {f.stem: sf.read(str(f), dtype="float32")[0] for f in test_other[0]}
    tok = Tokenizer()
    graphs = {cut: tok.decode(run_folder(int8, x, quantize=True)) for cut, x in audio.items()}
    same, theirs, ours = _parity(rows, graphs)
    assert same >= 0.99 * n and abs(theirs - ours) <= 0.002, same
    onnx = OnnxRecognizer(int8 / "encode.int8.onnx", threads=1)
    same, theirs, ours = _parity(rows, {cut: onnx(x) for cut, x in audio.items()})
    assert same >= 0.95 * n and abs(theirs - ours) <= 0.002, same


def _joined(files: list[Path], seconds: float) -> np.ndarray:
    """Real speech longer than `seconds`: utterances joined end to end."""
    parts: list[np.ndarray] = []
    while sum(len(p) for p in parts) <= seconds * 16000:
        parts.append(sf.read(str(files[len(parts)]), dtype="float32")[0])
    return np.concatenate(parts)


@pytest.mark.librispeech
def test_graph_features_equal_the_training_features(whisper_folders, test_other):
    """preprocess.onnx (what sherpa-onnx runs on the samples) gives asrkd's numpy Whisper
    log-mel, the features the student trained on, to float32 rounding (measured: 1 ulp,
    1.2e-7) on real speech: test-other utterances, one just under 30 s and one of ~35 s
    (where Whisper's maximum runs over every frame)."""
    from asrkd.data.whisper_features import N_SAMPLES, log_mel
    from asrkd.ondevice import onnx_session

    session = onnx_session(whisper_folders["fp32"] / "preprocess.onnx", threads=1)
    files = test_other[0]
    audio = [sf.read(str(f), dtype="float32")[0] for f in files[::33]]
    audio += [_joined(files[::-1], 29.0)[: N_SAMPLES - 1], _joined(files[::-1], 35.0)]
    assert len(audio[-1]) > N_SAMPLES
    for x in audio:
        (feats,) = session.run(None, {"audio": x[None]})
        ref = log_mel(x)
        assert feats.shape == (1, *ref.shape)
        assert np.abs(feats[0] - ref).max() < 1e-6


@pytest.mark.librispeech
def test_whisper_sherpa_folder_beyond_30_seconds(whisper_folders, whisper_model, test_other):
    """A ~35-s utterance through sherpa-onnx: the graphs' time axes are dynamic (no 30-s
    window) and the token loop's budget covers every output frame; the words are PyTorch's."""
    pytest.importorskip("sherpa_onnx")
    import torch

    from asrkd.sherpa import sherpa_recognizer, sherpa_text
    from asrkd.transcribe import Transcriber

    x = _joined(test_other[0][::-1], 35.0)
    rec = sherpa_recognizer(whisper_folders["fp32"])
    stream = rec.create_stream()
    stream.accept_waveform(16000, x)
    rec.decode_stream(stream)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    expected = Transcriber(whisper_model)(x)
    torch.set_num_threads(threads)
    assert len(x) > 35 * 16000 and expected
    assert sherpa_text(stream.result.text) == " ".join(expected.split())


@pytest.mark.librispeech
def test_transcribe_whisper_encoder_file_without_torch(
    whisper_folders, test_other, whisper_torch_greedy
):
    """`asrkd transcribe` on the folder's encode.onnx (it carries asrkd's metadata) with torch
    and lhotse blocked: numpy features, onnxruntime, PyTorch's words."""
    onnx = whisper_folders["fp32"] / "encode.onnx"
    files = [str(f) for f in test_other[0][:3]]
    out = _asrkd_without_torch("transcribe", str(onnx), *files)
    got = dict(line.split("\t") for line in out.splitlines())
    assert got == {f: whisper_torch_greedy[Path(f).stem] for f in files}


def test_moonshine_decoder_hands_over_the_tokens_then_stops(tmp_path) -> None:
    """decode.onnx in sherpa-onnx's loop (step s reads the s-th token the encoder marked, then
    </s>), and tokens.txt with <blk>, <s>, </s> first and asrkd's symbols 2 ids up."""
    import onnx

    from asrkd.ondevice import onnx_session
    from asrkd.sherpa import moonshine_tokens_txt
    from asrkd.sherpa_waveform import EOS, TOKEN_OFFSET, decoder_graph

    tok = Tokenizer()
    path = tmp_path / "decode.onnx"
    onnx.save(decoder_graph(tok.vocab_size, 18), str(path))
    session = onnx_session(path, threads=1)
    ids = [5, 5, 1, 7]  # asrkd ids (a repeat after a blank is a new token)
    encoder_out = np.zeros((1, 60, 1), dtype=np.float32)
    encoder_out[0, [3, 9, 10, 20], 0] = np.array(ids) + TOKEN_OFFSET
    got = []
    for step in range(1, 8):
        inputs = {"tokens": np.zeros((1, 1), np.int32), "encoder_out": encoder_out,
                  "seq_len": np.array([step], np.int32)}  # fmt: skip
        (logits,) = session.run(None, inputs)
        assert logits.shape == (1, 1, tok.vocab_size + TOKEN_OFFSET)
        got.append(int(logits.argmax()))
    assert got == [i + TOKEN_OFFSET for i in ids] + [EOS] * 3
    lines = moonshine_tokens_txt(tok).splitlines()
    assert lines[:4] == ["<blk> 0", "<s> 1", "</s> 2", "\u2581 3"]
    assert [int(line.rsplit(" ", 1)[1]) for line in lines] == list(range(tok.vocab_size + 2))
