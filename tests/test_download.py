"""The download stage: every kind of source, every failure, every unsafe archive."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from catsdogs import synthetic
from catsdogs.download import DownloadError, extract, fetch_dataset
from conftest import make_params


def _zip_bytes(folder: Path) -> bytes:
    archive = synthetic.zip_folder(folder, folder.parent / "archive.zip")
    return archive.read_bytes()


def _data(url: str, **overrides: object):
    return make_params(**{"data.url": url, "data.backoff_seconds": 0.01, "data.retries": 2, **overrides}).data


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def filtered(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    synthetic.write_dataset(root, per_class=6, layout="filtered")
    return root


def test_http_download_extracts_archive(tmp_path: Path, filtered: Path, http_server) -> None:
    body = _zip_bytes(filtered)
    url = http_server.add("/data.zip", body)
    raw = tmp_path / "data" / "raw"
    fetch_dataset(_data(url, **{"data.sha256": hashlib.sha256(body).hexdigest()}), raw)
    assert _files(raw) == _files(filtered)
    assert not list(raw.parent.glob(".raw*")), "temporary folders must be cleaned up"


def test_http_retries_transient_errors(tmp_path: Path, filtered: Path, http_server) -> None:
    url = http_server.add("/flaky.zip", _zip_bytes(filtered), status=lambda hit: 503 if hit < 3 else 200)
    fetch_dataset(_data(url), tmp_path / "raw")
    assert http_server.hits("/flaky.zip") == 3
    assert len(_files(tmp_path / "raw")) == 12


def test_checksum_mismatch_is_refused(tmp_path: Path, filtered: Path, http_server) -> None:
    url = http_server.add("/data.zip", _zip_bytes(filtered))
    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        fetch_dataset(_data(url, **{"data.sha256": "0" * 64}), tmp_path / "raw")
    assert url in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "raw").exists()


def test_404_fails_at_once_with_a_hint(tmp_path: Path, http_server) -> None:
    url = http_server.url("/missing.zip")
    with pytest.raises(DownloadError) as err:
        fetch_dataset(_data(url), tmp_path / "raw")
    message = str(err.value)
    assert "HTTP 404" in message and url in message and "data.url" in message
    assert http_server.hits("/missing.zip") == 1, "a 404 is not retried"
    assert not (tmp_path / "raw").exists()


def test_truncated_transfer_is_retried_then_refused(tmp_path: Path, filtered: Path, http_server) -> None:
    body = _zip_bytes(filtered)
    url = http_server.add("/cut.zip", body[:1000], declared=len(body))
    with pytest.raises(DownloadError, match="cannot download") as err:
        fetch_dataset(_data(url), tmp_path / "raw")
    assert "local copy" in str(err.value)
    assert http_server.hits("/cut.zip") == 3
    assert not (tmp_path / "raw").exists()


def test_no_network_names_the_url_and_the_fix(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/cats_and_dogs_filtered.zip"  # the discard port: nothing listens there
    with pytest.raises(DownloadError) as err:
        fetch_dataset(_data(url, **{"data.retries": 0}), tmp_path / "raw")
    assert url in str(err.value) and "data.url" in str(err.value) and "\n" not in str(err.value)


def test_failed_download_keeps_previous_data(tmp_path: Path, filtered: Path, http_server) -> None:
    raw = tmp_path / "raw"
    fetch_dataset(_data(str(filtered)), raw)
    before = _files(raw)
    with pytest.raises(DownloadError):
        fetch_dataset(_data(http_server.add("/gone", b"", status=404)), raw)
    assert _files(raw) == before


@pytest.mark.parametrize("form", ["path", "file_url"])
def test_local_archive_sources(tmp_path: Path, filtered: Path, form: str) -> None:
    archive = synthetic.zip_folder(filtered, tmp_path / "local.zip")
    url = str(archive) if form == "path" else archive.as_uri()
    fetch_dataset(_data(url), tmp_path / "raw")
    assert _files(tmp_path / "raw") == _files(filtered)


def test_folder_source_and_tar_gz(tmp_path: Path, filtered: Path) -> None:
    fetch_dataset(_data(filtered.as_uri()), tmp_path / "from_folder")
    assert _files(tmp_path / "from_folder") == _files(filtered)
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(filtered, arcname=".")
    fetch_dataset(_data(str(archive)), tmp_path / "from_tar")
    assert _files(tmp_path / "from_tar") == _files(filtered)


def test_tar_extracts_where_python_predates_the_data_filter(
    tmp_path: Path, filtered: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11.0-3.11.3 (allowed by requires-python) has no tarfile.data_filter and no extract(filter=)."""
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(filtered, arcname=".")
    original = tarfile.TarFile.extract

    def old_extract(self, member, path="", set_attrs=True, *, numeric_owner=False, **unknown):
        if unknown:
            raise TypeError(f"extract() got an unexpected keyword argument {next(iter(unknown))!r}")
        return original(self, member, path, set_attrs, numeric_owner=numeric_owner)

    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.setattr(tarfile.TarFile, "extract", old_extract)
    fetch_dataset(_data(str(archive)), tmp_path / "raw")
    assert _files(tmp_path / "raw") == _files(filtered)


def test_missing_local_source(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="no such file"):
        fetch_dataset(_data(str(tmp_path / "nope.zip")), tmp_path / "raw")


def test_unknown_layout_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    with pytest.raises(DownloadError, match="no labelled images"):
        fetch_dataset(_data(str(folder)), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def _zip_with(tmp_path: Path, name: str, payload: bytes = b"x", symlink: bool = False) -> Path:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats/ok.jpg", b"fine")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, payload)
    return archive


@pytest.mark.parametrize(
    ("name", "symlink", "reason"),
    [
        ("../escape.jpg", False, "'..'"),
        ("cats/../../escape.jpg", False, "'..'"),
        ("/etc/evil.jpg", False, "absolute"),
        ("C:/evil.jpg", False, "absolute"),
        ("cats/link.jpg", True, "symbolic link"),
    ],
)
def test_unsafe_zip_entries_are_refused(tmp_path: Path, name: str, symlink: bool, reason: str) -> None:
    dest = tmp_path / "out"
    with pytest.raises(DownloadError, match=reason):
        extract(_zip_with(tmp_path, name, b"/etc/passwd" if symlink else b"x", symlink), dest, 100, 10**6)
    assert not dest.exists(), "nothing may be extracted from a refused archive"
    assert not (tmp_path / "escape.jpg").exists()


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, payload: bytes = b"") -> Path:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        ok = tarfile.TarInfo("cats/ok.jpg")
        ok.size = 4
        tf.addfile(ok, io.BytesIO(b"fine"))
        member.size = len(payload) if member.isfile() else 0
        tf.addfile(member, io.BytesIO(payload) if payload else None)
    return archive


def _tarinfo(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_tarinfo("../escape.jpg"), "'..'"),
        (_tarinfo("/tmp/escape.jpg"), "absolute"),
        (_tarinfo("cats/link.jpg", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_tarinfo("cats/hard.jpg", tarfile.LNKTYPE, "cats/ok.jpg"), "link"),
        (_tarinfo("cats/fifo", tarfile.FIFOTYPE), "special file"),
    ],
)
def test_unsafe_tar_entries_are_refused(tmp_path: Path, member: tarfile.TarInfo, reason: str) -> None:
    dest = tmp_path / "out"
    with pytest.raises(DownloadError, match=reason):
        extract(_tar_with(tmp_path, member, b"x" if member.isfile() else b""), dest, 100, 10**6)
    assert not dest.exists()


def test_zip_bomb_limits(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cats/zeros.jpg", b"\0" * 5_000_000)  # compresses to a few KB
        for i in range(20):
            zf.writestr(f"dogs/{i}.jpg", b"x")
    assert archive.stat().st_size < 50_000
    with pytest.raises(DownloadError, match="max_bytes"):
        extract(archive, tmp_path / "a", max_files=100, max_bytes=1_000_000)
    with pytest.raises(DownloadError, match="max_files"):
        extract(archive, tmp_path / "b", max_files=10, max_bytes=10**8)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_zip_whose_header_lies_is_refused(tmp_path: Path) -> None:
    """A header may declare a small size to slip under the limits: the archive is refused, nothing kept."""
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("cats/big.jpg", b"y" * 200_000)
    data = bytearray(archive.read_bytes())
    # Patch the declared uncompressed size in the central directory to 10 bytes.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="liar.zip"):
        fetch_dataset(_data(str(archive), **{"data.max_bytes": 100_000}), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_truncated_or_non_archive_is_refused(tmp_path: Path, filtered: Path) -> None:
    body = _zip_bytes(filtered)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(body[: len(body) // 2])
    with pytest.raises(DownloadError, match="not a zip or tar|corrupt"):
        fetch_dataset(_data(str(cut)), tmp_path / "raw")
    text = tmp_path / "page.html"
    text.write_text("<html>rate limited</html>")
    with pytest.raises(DownloadError, match="not a zip or tar"):
        fetch_dataset(_data(str(text)), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
