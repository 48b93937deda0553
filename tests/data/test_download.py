"""download_librispeech against a local HTTP server laid out like openslr (``/12/<part>.tar.gz``,
``/31/`` for Mini LibriSpeech), so lhotse's real download, resume and unpacking code runs."""

from __future__ import annotations

import functools
import os
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from asrkd.config import PrepareConfig
from asrkd.data.librispeech import DataError, download_librispeech, prepare_librispeech
from tests.helpers import write_librispeech_tree

PARTS = {"dev-clean-2": 3, "test-clean": 2}  # one Mini LibriSpeech (/31/) and one main (/12/)


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single "bytes=N-" Range requests (http.server alone ignores Range)."""

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        requested = self.headers.get("Range")
        self.server.requests.append((self.path, requested))
        start = 0
        if requested and self.server.support_range:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        fh = open(path, "rb")  # noqa: SIM115 - closed by do_GET
        fh.seek(start)
        return fh


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    """openslr's layout: <root>/12/test-clean.tar.gz, <root>/31/dev-clean-2.tar.gz."""
    corpus = write_librispeech_tree(tmp_path / "build", PARTS, n_speakers=1, seed=3)
    serve = tmp_path / "serve"
    for part in PARTS:
        folder = serve / ("31" if part == "dev-clean-2" else "12")
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(folder / f"{part}.tar.gz", "w:gz") as tar:
            tar.add(corpus / part, arcname=f"LibriSpeech/{part}")
    return serve


@pytest.fixture
def server(archives: Path) -> Iterator[ThreadingHTTPServer]:
    handler = functools.partial(RangeHandler, directory=str(archives))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests, httpd.support_range = [], True
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_download_unpacks_and_prepares(server, tmp_path: Path) -> None:
    target = tmp_path / "download"
    corpus = download_librispeech(target, list(PARTS), base_url=server.base_url)
    assert corpus == target / "LibriSpeech"
    assert sorted(p for p, _ in server.requests) == [
        "/12/test-clean.tar.gz",
        "/31/dev-clean-2.tar.gz",
    ]
    for part, n_utts in PARTS.items():
        assert (corpus / part / ".completed").is_file()
        assert len(list((corpus / part).rglob("*.flac"))) == n_utts
    out = prepare_librispeech(corpus, PARTS, tmp_path / "out", PrepareConfig(), progress=False)
    assert set(out) == set(PARTS)
    download_librispeech(target, list(PARTS), base_url=server.base_url)
    assert len(server.requests) == 2, "an unpacked part is not downloaded again"


def test_partial_download_is_resumed(server, archives: Path, tmp_path: Path) -> None:
    target = tmp_path / "download"
    target.mkdir()
    full = (archives / "31" / "dev-clean-2.tar.gz").read_bytes()
    (target / "dev-clean-2.tar.gz").write_bytes(full[: len(full) // 2])
    corpus = download_librispeech(target, ["dev-clean-2"], base_url=server.base_url)
    assert server.requests == [("/31/dev-clean-2.tar.gz", f"bytes={len(full) // 2}-")]
    assert (target / "dev-clean-2.tar.gz").read_bytes() == full
    expected = _tree(tmp_path / "build" / "LibriSpeech" / "dev-clean-2")
    got = _tree(corpus / "dev-clean-2")
    got.pop(".completed")
    assert got == expected


def test_resume_on_server_without_range_support_downloads_again(server, tmp_path: Path) -> None:
    server.support_range = False  # lhotse would append the whole file to the partial one
    target = tmp_path / "download"
    target.mkdir()
    (target / "dev-clean-2.tar.gz").write_bytes(b"\x1f\x8b" + b"partial" * 50)
    corpus = download_librispeech(target, ["dev-clean-2"], base_url=server.base_url)
    assert len(server.requests) == 2 and server.requests[1][1] == "bytes=0-"
    assert len(list((corpus / "dev-clean-2").rglob("*.flac"))) == PARTS["dev-clean-2"]


def test_unknown_part_is_rejected_before_any_download(server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown LibriSpeech part.*train-clean-7"):
        download_librispeech(tmp_path, ["dev-clean-2", "train-clean-7"], base_url=server.base_url)
    assert server.requests == []


def test_missing_archive_names_the_url(server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"/12/dev-clean.tar.gz: download failed.*404"):
        download_librispeech(tmp_path, ["dev-clean"], base_url=server.base_url)
