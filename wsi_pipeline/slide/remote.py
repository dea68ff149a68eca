"""Remote slides (``https://``, ``s3://``, ``gs://``, … through fsspec, when that filesystem is installed),
read with tiffslide (OpenSlide reads local files only) through a local block cache: each block of the object
is fetched once, whichever process or run asks for it again. A remote slide is identified by its object's ETag
or checksum (one metadata request), never by reading the whole object to hash it."""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import cache_dir

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

BLOCK_BYTES = 1 << 20  # the cache's block: a 512² JPEG tile is ~30-100 kB, a level's tiles lie together
# Object metadata naming its content, in order of preference (HTTP and S3: ETag; GCS: md5Hash, crc32c).
IDENTITY_FIELDS = ("ETag", "etag", "md5Hash", "Content-MD5", "crc32c", "checksum")


def is_url(location: object) -> bool:
    """Whether a slide location is a URL (``scheme://…``; ``file://`` counts) rather than a local path."""
    return isinstance(location, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", location) is not None


def url_stem(url: str) -> str:
    """The stem of a URL's last path segment: ``https://host/a/slide.svs?x=1`` → ``slide``."""
    return PurePosixPath(urlsplit(url).path).stem or urlsplit(url).netloc


def _filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of a URL and the object's path in it, or an InputError naming the package that
    is missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:
        raise InputError(url, f"cannot read this URL ({error})") from None


def remote_identity(url: str) -> tuple[str, str]:
    """(sha256 of ``"<field>:<value>"``, field) for the object's ETag or checksum (``IDENTITY_FIELDS``)."""
    try:
        filesystem, path = _filesystem(url)
        info = filesystem.info(path)
    except InputError:
        raise
    except Exception as error:
        raise InputError(url, f"cannot reach the slide ({type(error).__name__}: {error})") from None
    for field in IDENTITY_FIELDS:
        if info.get(field):
            digest = hashlib.sha256(f"{field}:{info[field]}".encode()).hexdigest()
            return digest, field
    raise InputError(url, "the server gives no ETag or checksum to identify the slide by; download it first")


def open_remote(url: str) -> IO[bytes]:
    """A read-only file of the remote object through the on-disk block cache (``cache_dir()/remote``)."""
    import fsspec

    storage = cache_dir() / "remote"
    storage.mkdir(parents=True, exist_ok=True)
    filesystem, path = _filesystem(url)
    try:
        cached = fsspec.filesystem("blockcache", fs=filesystem, cache_storage=str(storage), check_files=True)
        return cached.open(path, "rb", block_size=BLOCK_BYTES)  # every filesystem's files take a block size
    except Exception as error:
        raise InputError(url, f"cannot open the slide ({type(error).__name__}: {error})") from None
