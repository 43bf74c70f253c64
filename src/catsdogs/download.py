"""Stage `download`: fetches data.url and extracts it safely into data/raw/.

data.url may be an http(s) URL, a file:// URL or a local path, to a zip or tar archive or to a
folder. Downloads stream to a temporary file with a progress bar, retry transient failures with
back-off, and are verified against data.sha256 when it is set. Archives are checked entry by
entry before anything is written. data/raw/ is replaced only once everything succeeded, so a
failure never leaves a partial data set behind.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import stat
import sys
import tarfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import requests
from tqdm import tqdm

from catsdogs import configure_logging
from catsdogs.config import RAW_DIR, ConfigError, DataParams, load_params
from catsdogs.data import LayoutError, class_counts, find_labelled_images

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The data could not be fetched or unpacked; one line that names the source and the fix."""


def main() -> None:
    configure_logging()
    try:
        fetch_dataset(load_params().data, RAW_DIR)
    except (DownloadError, ConfigError) as err:
        sys.exit(f"download: {err}")


def fetch_dataset(params: DataParams, raw_dir: Path) -> None:
    """Fetch params.url into raw_dir (replacing it), or raise DownloadError and leave raw_dir as it was."""
    work = raw_dir.parent / f".{raw_dir.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        tree = work / "tree"
        source = resolve_source(params.url)
        if isinstance(source, Path) and source.is_dir():
            log.info("copying folder %s", source)
            shutil.copytree(source, tree, symlinks=True)
        else:
            archive = source if isinstance(source, Path) else work / "archive"
            if not isinstance(source, Path):
                download(source, archive, params)
            verify_sha256(archive, params.sha256, params.url)
            extract(archive, tree, params.max_files, params.max_bytes)
        layout, images = find_labelled_images(tree)
        log.info("layout: %s; %d files, per class %s", layout, len(images), class_counts(images))
        _replace(raw_dir, tree)
    except LayoutError as err:
        raise DownloadError(f"{params.url}: {err}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def resolve_source(url: str) -> str | Path:
    """An http(s) URL stays a string; file:// URLs and plain paths become local Paths that must exist."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return url
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif len(parsed.scheme) <= 1:  # a plain path (or one that starts with a Windows drive letter)
        path = Path(url).expanduser()
    else:
        raise DownloadError(
            f"unsupported URL scheme {parsed.scheme!r} in data.url={url!r}; "
            "use http(s)://, file:// or a local path"
        )
    if not path.exists():
        raise DownloadError(f"{url}: no such file or folder; set data.url to an existing archive or folder")
    return path


def download(url: str, dest: Path, params: DataParams) -> None:
    """Stream url to dest; retry connection errors, timeouts, 5xx and truncated bodies."""
    for attempt in range(params.retries + 1):
        try:
            _download_once(url, dest, params.timeout_seconds)
            return
        except _Transient as err:
            reason = str(err)
        if attempt < params.retries:
            wait = params.backoff_seconds * 2**attempt
            log.warning("download failed (%s); retry %d/%d in %.1fs", reason, attempt + 1, params.retries, wait)
            time.sleep(wait)
    raise DownloadError(
        f"cannot download {url}: {reason} (after {params.retries + 1} attempts); "
        "without network, set data.url to a local copy (a path or file:// URL), "
        "e.g. dvc exp run -S data.url=/path/to/cats_and_dogs_filtered.zip"
    )


class _Transient(Exception):
    pass


def _download_once(url: str, dest: Path, timeout: float) -> None:
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise _Transient(f"HTTP {response.status_code} {response.reason}")
            if response.status_code >= 400:
                raise DownloadError(
                    f"cannot download {url}: HTTP {response.status_code} {response.reason}; "
                    "check data.url or set it to a local copy (a path or file:// URL)"
                )
            expected = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with dest.open("wb") as f, tqdm(
                total=expected, unit="B", unit_scale=True, desc="download", file=sys.stderr
            ) as bar:
                for chunk in response.iter_content(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
        raise _Transient(_short(err)) from None
    if expected is not None and received != expected:
        raise _Transient(f"truncated transfer: got {received} of {expected} bytes")


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{type(err).__name__}: {text[:200]}"


def verify_sha256(path: Path, expected: str | None, url: str) -> None:
    if expected is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        raise DownloadError(
            f"checksum mismatch for {url}: sha256 is {digest.hexdigest()}, data.sha256 expects {expected}; "
            "the file is corrupt or another version: fix data.sha256 (or set it to null) or data.url"
        )


def extract(archive: Path, dest: Path, max_files: int, max_bytes: int) -> None:
    """Extract a zip or tar archive after checking every entry; refuse the whole archive if one is unsafe."""
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest, max_files, max_bytes)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, dest, max_files, max_bytes)
    else:
        raise DownloadError(f"{archive.name}: not a zip or tar archive (or it is truncated)")


def _check_member(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DownloadError(f"{archive.name}: refusing absolute path {name!r}; nothing was extracted")
    if ".." in path.parts:
        raise DownloadError(f"{archive.name}: refusing path with '..' {name!r}; nothing was extracted")


def _check_totals(archive: Path, count: int, total: int, max_files: int, max_bytes: int) -> None:
    if count > max_files:
        raise DownloadError(
            f"{archive.name}: {count} entries exceed data.max_files={max_files} (zip bomb?); nothing was extracted"
        )
    if total > max_bytes:
        raise DownloadError(
            f"{archive.name}: {total} uncompressed bytes exceed data.max_bytes={max_bytes} "
            "(zip bomb?); nothing was extracted"
        )


def _extract_zip(archive: Path, dest: Path, max_files: int, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_member(info.filename, archive)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DownloadError(
                        f"{archive.name}: refusing symbolic link {info.filename!r}; nothing was extracted"
                    )
            _check_totals(archive, len(infos), sum(i.file_size for i in infos), max_files, max_bytes)
            written = 0
            for info in tqdm(infos, desc="extract", unit="file", file=sys.stderr):
                target = dest / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as out:
                    # Sizes in a zip header can lie: count what really comes out.
                    for chunk in iter(lambda: src.read(CHUNK), b""):
                        written += len(chunk)
                        if written > max_bytes:
                            raise DownloadError(
                                f"{archive.name}: more than data.max_bytes={max_bytes} uncompressed bytes "
                                "(zip bomb?); nothing was extracted"
                            )
                        out.write(chunk)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as err:
        raise DownloadError(f"{archive.name}: corrupt or truncated zip archive ({err})") from None


def _extract_tar(archive: Path, dest: Path, max_files: int, max_bytes: int) -> None:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                _check_member(member.name, archive)
                if member.issym() or member.islnk():
                    raise DownloadError(
                        f"{archive.name}: refusing link {member.name!r}; nothing was extracted"
                    )
                if not (member.isfile() or member.isdir()):
                    raise DownloadError(
                        f"{archive.name}: refusing special file {member.name!r}; nothing was extracted"
                    )
            _check_totals(archive, len(members), sum(m.size for m in members), max_files, max_bytes)
            dest.mkdir(parents=True, exist_ok=True)
            # filter="data" (Python 3.11.4+) is a second guard behind the checks above, which stand alone where
            # the interpreter predates it.
            has_filter = hasattr(tarfile, "data_filter")
            for member in tqdm(members, desc="extract", unit="file", file=sys.stderr):
                if has_filter:
                    tf.extract(member, dest, filter="data")
                else:
                    tf.extract(member, dest)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"{archive.name}: corrupt or truncated tar archive ({err})") from None


def _replace(raw_dir: Path, tree: Path) -> None:
    """Swap the finished tree into place; the old data set is removed only after the new one is there."""
    old = raw_dir.parent / f".{raw_dir.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if raw_dir.exists():
        raw_dir.rename(old)
    tree.rename(raw_dir)
    shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    main()
