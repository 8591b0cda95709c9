"""Datasets as uint8 arrays in memory: CIFAR-10, CIFAR-100, Fashion-MNIST and the bundled CIFAR-10 sample.

Sources (``config.data.source``):

* ``"folder"``: a local folder (``data_dir``) with the standard archives or extracted folders:
  ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``, ``cifar-100-python.tar.gz`` or
  ``cifar-100-python/``, or the four Fashion-MNIST ``*-idx?-ubyte.gz`` files. A subfolder named after
  the dataset (``data_dir/cifar10/...``) is found too. Files a download left in ``cache_dir`` count.
* ``"tfds"``: TensorFlow Datasets, if installed (``pip install -e ".[tfds]"``, which needs TensorFlow).
* ``"download"``: the official archive, with a progress bar, into ``cache_dir``, verified against its
  MD5 before use.
* ``"sample"``: the small real CIFAR-10 subset shipped in the package (``deepnmf_jax/data/``).
* ``"auto"``: folder, then TFDS, then download.

Archives are read as data only (:mod:`deepnmf_jax.archives`).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import logging
import os
import pathlib
import tarfile
import zlib

import numpy as np

from deepnmf_jax import archives
from deepnmf_jax.errors import DataError, UserError

log = logging.getLogger(__name__)

SOURCES = ("auto", "folder", "tfds", "download", "sample")


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
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    source: str  # where it was read from, for logs and results
    validation: Split | None = None  # held out of the training set (config.data.validation_size)


@dataclasses.dataclass(frozen=True)
class _Spec:
    num_classes: int
    archive: str | None  # single tar archive (CIFAR) or None (separate files)
    folder: str | None  # extracted folder inside the archive
    files: dict[str, str]  # file name -> official MD5
    url: str  # base URL of the official files
    tfds_name: str


DATASETS = {
    "cifar10": _Spec(
        num_classes=10,
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        files={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        url="https://www.cs.toronto.edu/~kriz/",
        tfds_name="cifar10",
    ),
    "cifar100": _Spec(
        num_classes=100,
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        files={"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
        url="https://www.cs.toronto.edu/~kriz/",
        tfds_name="cifar100",
    ),
    "fashion_mnist": _Spec(
        num_classes=10,
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

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "deepnmf_jax")


class DataNotFoundError(UserError, FileNotFoundError):
    """No source could provide the dataset; the message says where it looked and what to do."""


# --- parsing ----------------------------------------------------------------------------------------


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
                data = (location / member).read_bytes()
            else:
                data = archives.read_tar_member(location, f"{spec.folder}/{member}")
            batches.append(archives.safe_unpickle(data, label))
        splits.append(_cifar_split(batches, str(location)))
    return splits[0], splits[1]


def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
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


def _read_fashion_mnist(folder: pathlib.Path) -> tuple[Split, Split]:
    splits = []
    for prefix in ("train", "t10k"):
        images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 2051)[..., None]
        labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 2049).astype(np.int32)
        splits.append(Split(np.ascontiguousarray(images), labels))
    return splits[0], splits[1]


# --- sources ----------------------------------------------------------------------------------------


def _candidate_folders(name: str, data_dir: str | None, cache_dir: str) -> list[pathlib.Path]:
    folders = []
    for base in (data_dir, cache_dir):
        if base:
            base = pathlib.Path(base).expanduser()
            folders += [base, base / name]
    return folders


def _from_folder(name: str, folders: list[pathlib.Path]) -> tuple[Split, Split, str] | None:
    spec = DATASETS[name]
    for folder in folders:
        if spec.archive is None:
            if all((folder / f).is_file() for f in spec.files):
                return (*_read_fashion_mnist(folder), str(folder))
            continue
        for location in (folder / spec.folder, folder / spec.archive):
            if location.exists():
                return (*_read_damaged_as_data_error(name, location), str(location))
    return None


def _read_damaged_as_data_error(name: str, location: pathlib.Path) -> tuple[Split, Split]:
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


def _from_tfds(name: str, data_dir: str | None) -> tuple[Split, Split, str] | None:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    splits = []
    for split in ("train", "test"):
        images, labels = tfds.as_numpy(
            tfds.load(
                DATASETS[name].tfds_name,
                split=split,
                batch_size=-1,
                as_supervised=True,
                data_dir=data_dir or None,
            )
        )
        splits.append(Split(np.asarray(images, np.uint8), np.asarray(labels, np.int32)))
    return splits[0], splits[1], f"tfds:{DATASETS[name].tfds_name}"


def _from_download(
    name: str, cache_dir: str, base_url: str | None, progress: bool
) -> tuple[Split, Split, str]:
    spec = DATASETS[name]
    folder = pathlib.Path(cache_dir).expanduser() / name
    for file_name, md5 in spec.files.items():
        archives.download((base_url or spec.url) + file_name, folder / file_name, md5, progress)
    found = _from_folder(name, [folder])
    assert found is not None
    return found


def load_sample() -> Dataset:
    """The CIFAR-10 sample bundled with the package (see ``deepnmf_jax/data/README.md``)."""
    resource = importlib.resources.files("deepnmf_jax") / "data" / "cifar10_sample.npz"
    with importlib.resources.as_file(resource) as path, np.load(path) as arrays:
        train = Split(arrays["train_images"], arrays["train_labels"].astype(np.int32))
        test = Split(arrays["test_images"], arrays["test_labels"].astype(np.int32))
    return Dataset("cifar10", train, test, 10, "sample")


DOWNLOAD_MB = {
    "cifar-10-python.tar.gz": 163,
    "cifar-100-python.tar.gz": 161,
    "train-images-idx3-ubyte.gz": 26,
    "train-labels-idx1-ubyte.gz": 0.03,
    "t10k-images-idx3-ubyte.gz": 4.4,
    "t10k-labels-idx1-ubyte.gz": 0.005,
}
"""Sizes of the official files, said before a download starts."""


def load_dataset(
    name: str,
    source: str = "auto",
    data_dir: str | None = None,
    cache_dir: str = DEFAULT_CACHE_DIR,
    download_url: str | None = None,
    progress: bool = True,
) -> Dataset:
    """Loads a dataset from the first source that has it (module docstring).

    Args:
      name: ``"cifar10" | "cifar100" | "fashion_mnist"``.
      source: one of ``SOURCES``.
      data_dir: folder with the archives (``source="folder"``/``"auto"``), or TFDS's data_dir.
      cache_dir: where downloads go (and are found again).
      download_url: base URL replacing the official one (mirrors, tests).
      progress: show a progress bar while downloading.

    Raises:
      DataNotFoundError: no source had it; the message lists where it looked and the ways to fix it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; choose one of {SOURCES}")
    if source == "sample":
        if name != "cifar10":
            raise ValueError(f"the bundled sample is CIFAR-10 only, not {name!r}")
        return load_sample()
    looked = []
    found = None
    if source in ("auto", "folder"):
        folders = _candidate_folders(name, data_dir, cache_dir)
        found = _from_folder(name, folders)
        looked.append(
            "folders " + ", ".join(str(f) for f in folders) if folders else "no folder given"
        )
    if found is None and source in ("auto", "tfds"):
        found = _from_tfds(name, data_dir)
        looked.append("TensorFlow Datasets (not installed)" if found is None else "")
    if found is None and source == "auto" and os.environ.get("DEEPNMF_NO_DOWNLOAD"):
        looked.append("no download (DEEPNMF_NO_DOWNLOAD is set)")
    elif found is None and source in ("auto", "download"):
        url = download_url or DATASETS[name].url
        log.warning(
            "%s: not found locally; downloading %s from %s into %s (forbid with "
            "--config.data.source=folder or DEEPNMF_NO_DOWNLOAD=1)",
            name,
            ", ".join(f"{f} ({DOWNLOAD_MB.get(f, '?')} MB)" for f in DATASETS[name].files),
            url,
            pathlib.Path(cache_dir).expanduser() / name,
        )
        try:
            found = _from_download(name, cache_dir, download_url, progress)
        except (OSError, archives.ChecksumError) as error:
            looked.append(f"download from {download_url or DATASETS[name].url} ({error})")
    if found is None:
        spec = DATASETS[name]
        wanted = spec.archive or ", ".join(spec.files)
        raise DataNotFoundError(
            f"could not find the {name} dataset. Looked in: {'; '.join(x for x in looked if x)}.\n"
            "Provide it in one of three ways:\n"
            f"  1. put {wanted} in a folder and pass --config.data.data_dir=FOLDER "
            "(--config.data.source=folder);\n"
            '  2. install TensorFlow Datasets: pip install -e ".[tfds]" (--config.data.source=tfds);\n'
            f"  3. allow the download from {spec.url} (--config.data.source=download), which "
            f"caches it in {cache_dir}.\n"
            "For a quick demo, --config.data.source=sample uses the CIFAR-10 sample in the package."
        )
    train, test, where = found
    return Dataset(name, train, test, DATASETS[name].num_classes, where)
