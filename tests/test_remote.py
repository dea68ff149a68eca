"""Remote slides: a slide served over HTTP (a loopback server answering HEAD and Range requests) or S3 (moto's
S3 server on loopback, started here) scores to the same heatmap as the local file, fetching each byte at most
once, identified by its ETag."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from wsi_pipeline.cli.score import main
from wsi_pipeline.slide import remote as slide_remote
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.store.heatmap import read_heatmap

from .conftest import make_slide

pytest.importorskip("aiohttp", reason="fsspec reads http:// through aiohttp (pip install fsspec[http])")


class SlideServer(ThreadingHTTPServer):
    """Serves one file at ``/<name>``, answering HEAD and single Range requests; counts requests and bytes."""

    def __init__(self, file: Path, etag: str | None) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.file, self.etag = file, etag
        self.requests, self.bytes_sent = 0, 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{self.file.name}"


class RangeHandler(BaseHTTPRequestHandler):
    server: SlideServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _headers(self, status: int, length: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if self.server.etag:
            self.send_header("ETag", self.server.etag)
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()

    def do_HEAD(self) -> None:
        if self.path.lstrip("/") != self.server.file.name:
            self._headers(404, 0, {})
            return
        self._headers(200, self.server.file.stat().st_size, {})

    def do_GET(self) -> None:
        data = self.server.file.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match[1])
            end = min(int(match[2]) + 1 if match[2] else len(data), len(data))
            body = data[start:end]
            self._headers(206, len(body), {"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"})
        else:
            body = data
            self._headers(200, len(body), {})
        with self.server.lock:
            self.server.requests += 1
            self.server.bytes_sent += len(body)
        self.wfile.write(body)


@pytest.fixture
def serve(tmp_path, monkeypatch) -> Iterator:
    """Start a server for a file (with or without an ETag); the block cache in a fresh folder."""
    monkeypatch.setenv("WSI_PIPELINE_CACHE", str(tmp_path / "cache"))
    servers: list[SlideServer] = []

    def start(file: Path, etag: str | None = '"v1-slide"') -> SlideServer:
        server = SlideServer(file, etag)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def svs(tmp_path) -> Path:
    make_slide(tmp_path / "remote-node.svs", 3000, 2400, 0.5, [(900.0, 900.0, 1500.0, 1400.0)])
    return tmp_path / "remote-node.svs"


def score(capsys, slide: str | Path, out: Path, model: Path, *extra: str) -> tuple[int, str]:
    args = [str(slide), "-o", str(out), "--model", str(model), "--scheduler", "threads", "--workers", "2"]
    code = main([*args, "-q", "--no-reports", *extra])
    return code, capsys.readouterr().err


def scored_as_the_local_file(capsys, url: str, svs: Path, tmp_path: Path, model: Path) -> tuple:
    """The heatmaps of the slide at ``url`` and of its local file (tiffslide, read in full as a remote slide
    is: reduced decodes need local positional reads), checked equal; the remote one identified by its ETag."""
    code, err = score(capsys, url, tmp_path / "remote", model)
    assert code == 0, err
    local_args = ("--backend", "tiffslide", "--jpeg-scaling", "off")
    code, err = score(capsys, svs, tmp_path / "local", model, *local_args)
    assert code == 0, err
    remote = read_heatmap(tmp_path / "remote" / f"{svs.stem}.zarr")
    local = read_heatmap(tmp_path / "local" / f"{svs.stem}.zarr")
    np.testing.assert_array_equal(remote.probabilities, local.probabilities)
    recorded = remote.metadata.slide
    assert (recorded.path, recorded.backend, recorded.identity_source) == (url, "tiffslide", "ETag")
    return remote, local


def test_remote_slide_scores_as_the_local_file(serve, svs, tmp_path, capsys, probe_model, monkeypatch):
    monkeypatch.setattr(slide_remote, "BLOCK_BYTES", 16 * 1024)  # many blocks of this small slide
    server = serve(svs)
    remote, local = scored_as_the_local_file(capsys, server.url, svs, tmp_path, probe_model)
    # each block fetched once, by one range request, though planning and the workers open the slide apart
    blocks = -(-svs.stat().st_size // slide_remote.BLOCK_BYTES)
    assert 4 < server.requests <= blocks and 0 < server.bytes_sent <= svs.stat().st_size
    recorded = remote.metadata.slide
    assert recorded.jpeg_scaling == local.metadata.slide.jpeg_scaling == "off"
    assert recorded.sha256 == hashlib.sha256(b'ETag:"v1-slide"').hexdigest()
    assert local.metadata.slide.identity_source is None
    # a re-run keeps the complete heatmap: the ETag is asked for, no pixels are fetched again
    fetched = server.bytes_sent
    code, err = score(capsys, server.url, tmp_path / "remote", probe_model)
    assert code == 0, err
    assert server.bytes_sent - fetched < 64 * 1024


def test_remote_slide_needs_tiffslide_and_an_etag(serve, svs, tmp_path, capsys, probe_model):
    with pytest.raises(Exception, match="OpenSlide reads local files only"):
        Slide(serve(svs).url, backend="openslide")
    code, err = score(capsys, serve(svs, etag=None).url, tmp_path / "out", probe_model)
    assert code == 1 and "no ETag or checksum" in err


@pytest.fixture
def s3_bucket(tmp_path, monkeypatch) -> Iterator:
    """The bucket ``slides`` on an S3 endpoint on loopback (moto's server), the AWS settings pointing at it;
    the block cache in a fresh folder."""
    moto_server = pytest.importorskip("moto.server", reason="an S3 endpoint: pip install 'moto[server]'")
    s3fs = pytest.importorskip("s3fs", reason="fsspec reads s3:// through s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",  # as for any S3-compatible store
        "WSI_PIPELINE_CACHE": str(tmp_path / "cache"),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(logging.getLogger("werkzeug"), "level", logging.WARNING)  # one line per request
    s3fs.S3FileSystem.clear_instance_cache()  # made with these settings
    bucket = s3fs.S3FileSystem()
    bucket.mkdir("slides")
    yield bucket
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_an_s3_slide_scores_as_the_local_file_and_a_replaced_object_is_never_mixed(
    s3_bucket, svs, tmp_path, capsys, probe_model
):
    url = "s3://slides/remote-node.svs"
    s3_bucket.put(str(svs), url)
    remote, _ = scored_as_the_local_file(capsys, url, svs, tmp_path, probe_model)
    recorded, etag = remote.metadata.slide, s3_bucket.info(url)["ETag"]
    assert recorded.sha256 == hashlib.sha256(f"ETag:{etag}".encode()).hexdigest()
    # the object replaced by another slide: another ETag, so its heatmap is refused, never mixed
    other = tmp_path / "other.svs"
    make_slide(other, 3000, 2400, 0.5, [(300.0, 300.0, 900.0, 800.0)])
    s3_bucket.put(str(other), url)
    code, err = score(capsys, url, tmp_path / "remote", probe_model)
    assert code == 1 and "slide content (sha256)" in err
