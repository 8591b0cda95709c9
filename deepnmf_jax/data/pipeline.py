"""Datasets as uint8 arrays in memory: CIFAR-10, CIFAR-100, Fashion-MNIST and the bundled CIFAR-10 sample.

Sources (``config.data.source``):

* ``"folder"``: a local folder (``data_dir``) with the standard archives or extracted folders:
  ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``, ``cifar-100-python.tar.gz`` or
  ``cifar-100-python/``, or the four Fashion-MNIST ``*-idx?-ubyte.gz`` files. A subfolder named after
  the dataset (``data_dir/cifar10/...``) is found too. Files a download left in ``cache_dir`` count.
* ``"tfds"``: TensorFlow Datasets, if installed (``pip install -e ".[tfds]"``, which needs TensorFlow):
  TFDS downloads and prepares the dataset in ``data_dir`` (or its own default folder) if it has not
  yet (not with ``DEEPNMF_NO_DOWNLOAD`` set); the images come back in the official order.
* ``"download"``: the official archive, with a progress bar, into ``cache_dir``, verified against its
  MD5 before use.
* ``"sample"``: the small real CIFAR-10 subset shipped in the package (``deepnmf_jax/data/``).
* ``"auto"``: the folder, then a dataset TFDS has already prepared, then a download, but only when
  no ``data_dir`` was given: a ``data_dir`` that holds no dataset is an error naming where it
  looked, never a quiet download.

Archives are read as data only (:mod:`deepnmf_jax.archives`).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
import pathlib

import numpy as np

from deepnmf_jax.data import archives, files
from deepnmf_jax.data.config import DEFAULT_CACHE_DIR, SOURCES, DataConfig
from deepnmf_jax.data.files import DATASETS, Split
from deepnmf_jax.errors import ConfigError, UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    source: str  # where it was read from, for logs and results
    validation: Split | None = None  # held out of the training set (config.data.validation_size)


class DataNotFoundError(UserError, FileNotFoundError):
    """No source could provide the dataset; the message says where it looked and what to do."""


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
                return (*files.read_fashion_mnist(folder), str(folder))
            continue
        assert spec.folder is not None  # an archive always unpacks into a folder
        for location in (folder / spec.folder, folder / spec.archive):
            if location.exists():
                return (*files.read_cifar_or_explain(name, location), str(location))
    return None


def _from_tfds(
    name: str, data_dir: str | None, download: bool
) -> tuple[tuple[Split, Split, str] | None, str]:
    """The dataset through TensorFlow Datasets, and what to say of where it looked.

    Without ``download`` only a dataset TFDS has already prepared (in ``data_dir`` or TFDS's own
    default folder) is read. The examples come back in the official order (TFDS stores them in its
    own hashed order; they are sorted by their ``id``), so both splits equal the folder reader's.
    """
    try:
        import tensorflow_datasets as tfds  # pyright: ignore[reportMissingImports]
    except ImportError:
        return None, "TensorFlow Datasets (not installed)"
    tfds_name = DATASETS[name].tfds_name
    builder = tfds.builder(tfds_name, data_dir=data_dir or None)
    if not download and not builder.is_prepared():
        return None, f"TensorFlow Datasets ({tfds_name} not prepared in {builder.data_dir})"
    splits = []
    try:
        builder.download_and_prepare()  # a no-op for a prepared dataset
        for split in ("train", "test"):
            # (TFDS's logging decorator hides as_dataset's signature from type checkers)
            dataset = builder.as_dataset(split=split, batch_size=-1)  # pyright: ignore[reportCallIssue]
            examples = tfds.as_numpy(dataset)
            order = np.argsort(examples["id"], kind="stable") if "id" in examples else slice(None)
            images, labels = examples["image"][order], examples["label"][order]
            splits.append(Split(np.asarray(images, np.uint8), np.asarray(labels, np.int32)))
    except Exception as error:  # TFDS raises many kinds (network, checksums, TensorFlow's own)
        first_line = (str(error).strip().splitlines() or [""])[0]
        return None, f"TensorFlow Datasets ({type(error).__name__}: {first_line})"
    return (splits[0], splits[1], f"tfds:{tfds_name}"), ""


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
        # "auto" reads a dataset TFDS has prepared; "tfds" lets TFDS download and prepare it
        download = source == "tfds" and not os.environ.get("DEEPNMF_NO_DOWNLOAD")
        found, where = _from_tfds(name, data_dir, download)
        looked.append(where)
    if found is None and source == "auto" and data_dir:
        looked.append(f"no download (a data_dir was given: {data_dir})")
    elif found is None and source == "auto" and os.environ.get("DEEPNMF_NO_DOWNLOAD"):
        looked.append("no download (DEEPNMF_NO_DOWNLOAD is set)")
    elif found is None and source in ("auto", "download"):
        url = download_url or DATASETS[name].url
        cached = pathlib.Path(cache_dir).expanduser() / name
        missing = [f for f in DATASETS[name].files if not (cached / f).exists()]
        if missing:  # (a file already in the cache is only verified, not announced)
            log.warning(
                "%s: not found locally; downloading %s from %s into %s (forbid with "
                "--config.data.source=folder or DEEPNMF_NO_DOWNLOAD=1)",
                name,
                ", ".join(f"{f} ({DOWNLOAD_MB.get(f, '?')} MB)" for f in missing),
                url,
                cached,
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


def load_for_config(data_config: DataConfig, progress: bool = True) -> Dataset:
    """The dataset of a config's ``data`` section, limited (``train_limit``, ``test_limit``) and with
    its validation split (``validation_size``). In a multi-process run process 0 loads (and
    downloads, if it must) first and the others after it, from what it cached."""
    import jax

    def load():
        return load_dataset(
            data_config.name,
            source=data_config.source,
            data_dir=data_config.data_dir or None,
            cache_dir=data_config.cache_dir,
            download_url=data_config.download_url or None,
            progress=progress,
        )

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        data = load() if jax.process_index() == 0 else None
        multihost_utils.sync_global_devices("deepnmf_jax: dataset loaded by process 0")
        data = data or load()
    else:
        data = load()
    train = data.train.take(data_config.train_limit)
    validation = None
    size = data_config.validation_size
    if size:
        if size >= len(train):
            raise ConfigError(
                f"config.data.validation_size = {size} leaves no training images of {len(train)}"
            )
        train, validation = train.split_off(size)
    return dataclasses.replace(
        data, train=train, test=data.test.take(data_config.test_limit), validation=validation
    )
