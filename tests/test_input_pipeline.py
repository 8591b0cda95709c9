"""Data loading (deepnmf_jax.input_pipeline, deepnmf_jax.archives) on generated and malicious inputs."""

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import os
import pathlib
import pickle
import tarfile
import threading

import numpy as np
import pytest

from deepnmf_jax.data import archives
from deepnmf_jax.data import pipeline as input_pipeline


def _batch(rng, n, label_key=b"labels", classes=10):
    return {
        b"batch_label": b"generated",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, classes, n).tolist(),
        b"filenames": [b"x.png"] * n,
    }


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_cifar_archive(path, name="cifar10", n=4, seed=0):
    """A CIFAR archive in the official layout with n images per batch; returns the batches."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, members, key = (
            "cifar-10-batches-py",
            [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"],
            b"labels",
        )
    else:
        folder, members, key = "cifar-100-python", ["train", "test"], b"fine_labels"
    batches = {m: _batch(rng, n, key, 10 if name == "cifar10" else 100) for m in members}
    with tarfile.open(path, "w:gz") as tar:
        for member, batch in batches.items():
            if name == "cifar100":
                batch[b"coarse_labels"] = [0] * n
            _add(tar, f"{folder}/{member}", pickle.dumps(batch, protocol=2))
    return batches


def _images(batch):
    return batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive_from_folder(tmp_path, name):
    spec = input_pipeline.DATASETS[name]
    batches = make_cifar_archive(tmp_path / spec.archive, name)
    data = input_pipeline.load_dataset(
        name, source="folder", data_dir=str(tmp_path), progress=False
    )
    train_members = [m for m in batches if m not in ("test_batch", "test")]
    np.testing.assert_array_equal(
        data.train.images, np.concatenate([_images(batches[m]) for m in train_members])
    )
    key = b"labels" if name == "cifar10" else b"fine_labels"
    test_batch = batches["test_batch" if name == "cifar10" else "test"]
    np.testing.assert_array_equal(data.test.labels, test_batch[key])
    assert data.num_classes == spec.num_classes and data.train.images.dtype == np.uint8


def test_extracted_folder_and_dataset_subfolder(tmp_path):
    batches = make_cifar_archive(tmp_path / "a.tar.gz")
    extracted = tmp_path / "cifar10" / "cifar-10-batches-py"
    extracted.mkdir(parents=True)
    for member, batch in batches.items():
        (extracted / member).write_bytes(pickle.dumps(batch))
    data = input_pipeline.load_dataset("cifar10", source="folder", data_dir=str(tmp_path))
    np.testing.assert_array_equal(data.test.images, _images(batches["test_batch"]))
    assert data.source.endswith("cifar-10-batches-py")


def _idx(array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.tobytes())


def test_fashion_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, n in (("train", 6), ("t10k", 3)):
        arrays[prefix] = (
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.uint8),
        )
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(arrays[prefix][0], 2051))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(arrays[prefix][1], 2049))
    data = input_pipeline.load_dataset("fashion_mnist", source="folder", data_dir=str(tmp_path))
    assert data.train.images.shape == (6, 28, 28, 1)
    np.testing.assert_array_equal(data.test.images[..., 0], arrays["t10k"][0])
    np.testing.assert_array_equal(data.train.labels, arrays["train"][1])
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(_idx(arrays["t10k"][1], 2051))
    with pytest.raises(archives.UnsafeArchiveError, match="magic 2049"):
        input_pipeline.load_dataset("fashion_mnist", source="folder", data_dir=str(tmp_path))


def test_bundled_sample_is_the_documented_subset():
    data = input_pipeline.load_sample()
    assert data.train.images.shape == (1000, 32, 32, 3) and data.test.images.shape == (
        500,
        32,
        32,
        3,
    )
    assert np.bincount(data.train.labels).tolist() == [100] * 10
    assert np.bincount(data.test.labels).tolist() == [50] * 10
    assert hashlib.sha256(data.train.images.tobytes()).hexdigest().startswith("7d65170401349755")
    assert hashlib.sha256(data.test.images.tobytes()).hexdigest().startswith("b130bd64837d7ea4")


def test_missing_data_says_where_it_looked_and_how_to_fix_it(tmp_path):
    with pytest.raises(input_pipeline.DataNotFoundError) as error:
        input_pipeline.load_dataset(
            "cifar10",
            source="folder",
            data_dir=str(tmp_path / "nowhere"),
            cache_dir=str(tmp_path / "cache"),
        )
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "cifar-10-python.tar.gz" in message
    for way in ("--config.data.data_dir", "tfds", "--config.data.source=download", "sample"):
        assert way in message


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_crafted_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        archives.UnsafeArchiveError,
        match=r"refusing to load (posix|os)\.system",
    ):
        archives.safe_unpickle(pickle.dumps({b"data": _Evil()}), "evil")
    assert not (tmp_path / "PWNED").exists()
    with pytest.raises(archives.UnsafeArchiveError, match="Python objects"):
        archives.safe_unpickle(pickle.dumps({b"data": np.array([1, "a"], dtype=object)}), "objects")
    # the same through a whole archive
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for member in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
            _add(tar, f"cifar-10-batches-py/{member}", pickle.dumps({b"data": _Evil()}))
    with pytest.raises(archives.UnsafeArchiveError):
        input_pipeline.load_dataset("cifar10", source="folder", data_dir=str(tmp_path))
    assert not (tmp_path / "PWNED").exists()


def test_tar_links_and_traversal_are_refused(tmp_path):
    inside = tmp_path / "cache"
    inside.mkdir()
    archive = inside / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "../../escaped", b"should never be written")
        link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(archives.UnsafeArchiveError, match="not a regular file"):
        input_pipeline.load_dataset("cifar10", source="folder", data_dir=str(inside))
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert sorted(p.name for p in inside.iterdir()) == ["cifar-10-python.tar.gz"]


@contextlib.contextmanager
def _serve(directory):
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _served_archive(tmp_path, monkeypatch):
    """A generated CIFAR-10 archive in ``tmp_path/served``, made the official one (its MD5) for the
    test. Returns (folder, its batches, its MD5)."""
    served = tmp_path / "served"
    served.mkdir()
    batches = make_cifar_archive(served / "cifar-10-python.tar.gz")
    md5 = archives.md5sum(served / "cifar-10-python.tar.gz")
    spec = input_pipeline.DATASETS["cifar10"]
    monkeypatch.setitem(
        input_pipeline.DATASETS,
        "cifar10",
        input_pipeline.dataclasses.replace(spec, files={spec.archive: md5}),
    )
    return served, batches, md5


def test_download_from_local_server_verifies_checksum(tmp_path, monkeypatch):
    served, batches, good_md5 = _served_archive(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    with _serve(served) as url:
        data = input_pipeline.load_dataset(
            "cifar10", source="download", cache_dir=str(cache), download_url=url, progress=False
        )
        np.testing.assert_array_equal(data.test.images, _images(batches["test_batch"]))
        assert (cache / "cifar10" / "cifar-10-python.tar.gz").exists()

        # A corrupted file on the server is rejected and nothing is left in the cache.
        corrupted = bytearray((served / "cifar-10-python.tar.gz").read_bytes())
        corrupted[100] ^= 0xFF
        (served / "cifar-10-python.tar.gz").write_bytes(bytes(corrupted))
        target = tmp_path / "fresh" / "cifar-10-python.tar.gz"
        with pytest.raises(archives.ChecksumError, match="does not match"):
            archives.download(url + "cifar-10-python.tar.gz", target, good_md5, progress=False)
        assert not target.exists() and list(target.parent.iterdir()) == []
        with pytest.raises(input_pipeline.DataNotFoundError, match="does not match"):
            input_pipeline.load_dataset(
                "cifar10",
                source="download",
                cache_dir=str(tmp_path / "cache2"),
                download_url=url,
                progress=False,
            )
        assert not any((tmp_path / "cache2").rglob("*.tar.gz"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset"):
        input_pipeline.load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown data source"):
        input_pipeline.load_dataset("cifar10", source="web")
    with pytest.raises(ValueError, match="CIFAR-10 only"):
        input_pipeline.load_dataset("cifar100", source="sample")


SHARED_CIFAR10 = (
    pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10"
)


@pytest.mark.skipif(
    not (SHARED_CIFAR10 / "cifar-10-python.tar.gz").exists(),
    reason="the real CIFAR-10 archive is not beside the checkout",
)
def test_real_cifar10_archive_decodes_to_the_published_checksums():
    data = input_pipeline.load_dataset("cifar10", source="folder", data_dir=str(SHARED_CIFAR10))
    digests = [
        hashlib.sha256(array.tobytes()).hexdigest()
        for array in (
            data.train.images,
            data.train.labels.astype(np.uint8),
            data.test.images,
            data.test.labels.astype(np.uint8),
        )
    ]
    assert digests == [
        "47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a",
        "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253",
        "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04",
        "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5",
    ]


def test_auto_says_it_downloads_from_where_and_can_be_forbidden(tmp_path, monkeypatch, caplog):
    served, _, _ = _served_archive(tmp_path, monkeypatch)
    monkeypatch.setenv("DEEPNMF_NO_DOWNLOAD", "1")
    with pytest.raises(input_pipeline.DataNotFoundError, match="DEEPNMF_NO_DOWNLOAD is set"):
        input_pipeline.load_dataset("cifar10", source="auto", cache_dir=str(tmp_path / "c1"))
    monkeypatch.delenv("DEEPNMF_NO_DOWNLOAD")
    with _serve(served) as url, caplog.at_level("WARNING", logger="deepnmf_jax.input_pipeline"):
        input_pipeline.load_dataset(
            "cifar10",
            source="auto",
            cache_dir=str(tmp_path / "c2"),
            download_url=url,
            progress=False,
        )
    (message,) = [r.getMessage() for r in caplog.records if "downloading" in r.getMessage()]
    assert f"from {url}" in message and "(163 MB)" in message and "DEEPNMF_NO_DOWNLOAD" in message
