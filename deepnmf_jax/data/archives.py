"""Reading dataset archives as data, never as code, and downloading them safely.

* :func:`safe_unpickle` reads the CIFAR pickles with an unpickler that admits only the types they
  contain (NumPy arrays of plain dtypes, dicts, lists, bytes, str, numbers): a crafted pickle that names
  any other callable fails with :class:`UnsafeArchiveError` before anything runs.
* :func:`read_tar_member` reads one regular file out of a tar archive in memory. Nothing is extracted, so
  member names like ``../../x`` cannot write outside the cache; links and devices are refused.
* :func:`read_npz` reads ``.npz`` files (weights, state dicts) without pickles, refusing a member
  whose declared size is larger than a cap before anything is read or allocated; tar members and
  gzip streams are capped the same way (a small archive that claims gigabytes is refused at once).
* :func:`download` writes to a temporary file beside the target, verifies the MD5 (the official
  checksums are MD5) and only then renames it into place; a mismatch removes the file and raises.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pickle
import tarfile
import urllib.request

import numpy as np

from deepnmf_jax._progress import progress_bar
from deepnmf_jax.errors import DataError


class UnsafeArchiveError(DataError):
    """An archive holds something other than the data it should (code, links, wrong types)."""


class ChecksumError(DataError):
    """A downloaded or local file does not have the expected checksum."""


def _reconstruct(*args):
    from numpy._core import multiarray

    return multiarray._reconstruct(*args)


def _encode_bytes(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise UnsafeArchiveError(f"unexpected text encoding {encoding!r} in a dataset pickle")
    return text.encode("latin1")


# (module, name) -> object: everything a CIFAR pickle (Python 2 or 3, NumPy 1 or 2) refers to.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _encode_bytes,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeArchiveError(
                f"refusing to load {module}.{name} from a dataset pickle: dataset files may only "
                "hold arrays, lists, dicts, bytes, strings and numbers"
            ) from None


def safe_unpickle(data: bytes, source: str = "pickle"):
    """Unpickles ``data`` admitting only the types of the CIFAR pickles (module docstring)."""
    try:
        value = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafeArchiveError as error:
        raise UnsafeArchiveError(f"{source}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise UnsafeArchiveError(f"{source}: not a valid dataset pickle ({error})") from None
    _check_plain(value, source)
    return value


def _check_plain(value, source: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, source)
            _check_plain(item, source)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_plain(item, source)
    elif isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise UnsafeArchiveError(f"{source}: arrays of Python objects are not dataset content")
    elif not isinstance(value, bytes | str | int | float | bool | type(None)):
        raise UnsafeArchiveError(f"{source}: unexpected value of type {type(value).__name__}")


def read_tar_member(archive: str | os.PathLike, member: str, max_bytes: int) -> bytes:
    """The bytes of one regular file in a (possibly compressed) tar archive, without extracting;
    a member whose header declares more than ``max_bytes`` is refused before it is read."""
    with tarfile.open(archive, "r:*") as tar:
        # header by header, so the wanted member's declared size is checked as soon as its header
        # is read (before anything after it: ``getmember`` would first walk the whole archive)
        for info in tar:
            if info.name == member:
                break
        else:
            raise FileNotFoundError(f"{archive} has no member {member!r}")
        if not info.isfile():
            raise UnsafeArchiveError(
                f"{archive}: member {member!r} is not a regular file (a link or device); refusing it"
            )
        if info.size > max_bytes:
            raise UnsafeArchiveError(
                f"{archive}: member {member!r} declares {info.size:,} bytes, more than its format "
                f"holds ({max_bytes:,}); refusing it"
            )
        handle = tar.extractfile(info)
        assert handle is not None  # regular files always have one
        return handle.read(max_bytes + 1)


def gunzip(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The decompressed bytes of a gzip file, refused once they pass ``max_bytes``."""
    import gzip

    with gzip.open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeArchiveError(
            f"{path}: decompresses to more than {max_bytes:,} bytes, more than its format holds"
        )
    return data


MAX_NPZ_MEMBER_BYTES = 512 * 2**20


def read_npz(source, label: str, max_bytes: int = MAX_NPZ_MEMBER_BYTES) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (a path or a file object), read without pickles; every member's
    declared size (its zip entry and its array header) is checked against ``max_bytes`` first.

    Raises:
      UnsafeArchiveError: not an npz, an object array, or a member larger than ``max_bytes``.
    """
    import zipfile

    from numpy.lib import format as npy_format

    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise UnsafeArchiveError(f"{label}: not an .npz file ({error})") from None
    arrays = {}
    with archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if info.file_size > max_bytes:
                raise UnsafeArchiveError(
                    f"{label}: {name} declares {info.file_size:,} bytes (at most {max_bytes:,})"
                )
            with archive.open(info) as member:
                try:
                    version = npy_format.read_magic(member)
                    read_header = (
                        npy_format.read_array_header_1_0
                        if version == (1, 0)
                        else npy_format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read_header(member)
                except ValueError as error:
                    raise UnsafeArchiveError(f"{label}: {name} is not an array ({error})") from None
                if dtype.hasobject:
                    raise UnsafeArchiveError(f"{label}: {name} holds Python objects; refused")
                size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if size > max_bytes or size > info.file_size:
                    raise UnsafeArchiveError(
                        f"{label}: {name} claims shape {shape} ({size:,} bytes) in a member of "
                        f"{info.file_size:,} bytes; refused"
                    )
                data = member.read(size)
            if len(data) != size:
                raise UnsafeArchiveError(f"{label}: {name} is cut short")
            array = np.frombuffer(data, dtype)
            arrays[name] = (
                array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
            ).copy()
    return arrays


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, target: str | os.PathLike, md5: str, progress: bool = True) -> pathlib.Path:
    """Downloads ``url`` to ``target``, verifying its MD5 before the file appears under that name.

    Returns the target path. On a checksum mismatch the partial file is removed and
    :class:`ChecksumError` raised; a target that already exists with the right checksum is reused.
    """
    target = pathlib.Path(target)
    if target.exists():
        if md5sum(target) == md5:
            return target
        target.unlink()  # stale or corrupted: fetch again
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"downloading {target.name}",
                disable=not progress,
            ) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise ChecksumError(
                f"{url}: MD5 {digest.hexdigest()} does not match the expected {md5}; the file "
                "was removed"
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
