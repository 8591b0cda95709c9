"""Dataset files as uint8 arrays: the CIFAR pickles (archive or extracted folder) and Fashion-MNIST's
IDX files, read as data only (:mod:`deepnmf_jax.archives`), and the table of known datasets."""

from __future__ import annotations

import dataclasses
import gzip
import pathlib
import tarfile
import zlib

import numpy as np

from deepnmf_jax.data import archives
from deepnmf_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: images (N, H, W, C) uint8 and labels (N,) int32."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"{self.labels.shape[0]} labels for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, count: int) -> Split:
        """The first ``count`` examples (all if ``count`` <= 0)."""
        return self if count <= 0 else Split(self.images[:count], self.labels[:count])

    def split_off(self, count: int, seed: int = 0) -> tuple[Split, Split]:
        """(rest, held out): ``count`` examples chosen by a fixed permutation (the last ``count`` of
        ``permutation(seed)``) are held out; the rest keep their order."""
        held = np.zeros(len(self), bool)
        held[np.random.default_rng(seed).permutation(len(self))[len(self) - count :]] = True
        return (
            Split(self.images[~held], self.labels[~held]),
            Split(self.images[held], self.labels[held]),
        )


@dataclasses.dataclass(frozen=True)
class _Spec:
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the stored images
    train_size: int  # images in the official training split
    archive: str | None  # single tar archive (CIFAR) or None (separate files)
    folder: str | None  # extracted folder inside the archive
    files: dict[str, str]  # file name -> official MD5
    url: str  # base URL of the official files
    tfds_name: str


DATASETS = {
    "cifar10": _Spec(
        num_classes=10,
        image_shape=(32, 32, 3),
        train_size=50_000,
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        files={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        url="https://www.cs.toronto.edu/~kriz/",
        tfds_name="cifar10",
    ),
    "cifar100": _Spec(
        num_classes=100,
        image_shape=(32, 32, 3),
        train_size=50_000,
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        files={"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
        url="https://www.cs.toronto.edu/~kriz/",
        tfds_name="cifar100",
    ),
    "fashion_mnist": _Spec(
        num_classes=10,
        image_shape=(28, 28, 1),
        train_size=60_000,
        archive=None,
        folder=None,
        files={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        tfds_name="fashion_mnist",
    ),
}


def _cifar_split(batches: list[dict], source: str) -> Split:
    images, labels = [], []
    for batch in batches:
        data = batch.get(b"data")
        label_list = batch.get(b"labels", batch.get(b"fine_labels"))
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3072
        ):
            raise archives.UnsafeArchiveError(f"{source}: b'data' is not a uint8 (N, 3072) array")
        if label_list is None or len(label_list) != data.shape[0]:
            raise archives.UnsafeArchiveError(f"{source}: labels missing or of the wrong length")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(label_list, np.int32))
    return Split(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


CIFAR_IMAGE_BYTES = 3072


def _cifar_member_cap(name: str, member: str) -> int:
    """The most bytes a CIFAR pickle can hold: its images (10,000 per CIFAR-10 batch, 50,000 in
    CIFAR-100's train file) and labels, with room for the pickle's framing and file names."""
    images = 50_000 if (name == "cifar100" and member == "train") else 10_000
    return images * (CIFAR_IMAGE_BYTES + 128) + 2**20


def _cifar_members(name: str) -> dict[str, list[str]]:
    if name == "cifar10":
        return {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]}
    return {"train": ["train"], "test": ["test"]}


def _read_cifar(name: str, location: pathlib.Path) -> tuple[Split, Split]:
    """``location`` is the archive (.tar.gz) or the extracted folder."""
    spec = DATASETS[name]
    splits = []
    for split_members in _cifar_members(name).values():
        batches = []
        for member in split_members:
            label = f"{location}:{member}"
            if location.is_dir():
                path = location / member
                if path.stat().st_size > _cifar_member_cap(name, member):
                    raise archives.UnsafeArchiveError(f"{path} is larger than a CIFAR file can be")
                data = path.read_bytes()
            else:
                data = archives.read_tar_member(
                    location, f"{spec.folder}/{member}", _cifar_member_cap(name, member)
                )
            batches.append(archives.safe_unpickle(data, label))
        splits.append(_cifar_split(batches, str(location)))
    return splits[0], splits[1]


IDX_MAX_BYTES = 70_000 * 28 * 28 + 64  # Fashion-MNIST's 60,000 + 10,000 images at most


def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    data = archives.gunzip(path, IDX_MAX_BYTES)
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise archives.UnsafeArchiveError(
            f"{path}: not an IDX file with magic {magic} (got {found})"
        )
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise archives.UnsafeArchiveError(f"{path}: size does not match its header {dims}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def read_fashion_mnist(folder: pathlib.Path) -> tuple[Split, Split]:
    splits = []
    for prefix in ("train", "t10k"):
        images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 2051)[..., None]
        labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 2049).astype(np.int32)
        splits.append(Split(np.ascontiguousarray(images), labels))
    return splits[0], splits[1]


def read_cifar_or_explain(name: str, location: pathlib.Path) -> tuple[Split, Split]:
    """:func:`_read_cifar`, with a truncated, empty, not-gzip or incomplete archive or folder
    reported as one :class:`DataError` (and, for an archive, whether its MD5 is the official
    one, so that a damaged download is named as such)."""
    try:
        return _read_cifar(name, location)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, FileNotFoundError) as error:
        detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if location.is_dir():
            raise DataError(f"{location} is incomplete or damaged ({detail})") from None
        official = DATASETS[name].files.get(location.name)
        md5 = archives.md5sum(location)
        verdict = (
            f"its MD5 {md5} is not the official {official}: the file is damaged (a cut-short "
            "download?) or not the official archive; delete it and download it again"
            if official and md5 != official
            else "delete it and provide it again"
        )
        raise DataError(f"cannot read {location} ({detail}); {verdict}") from None
