"""Sharding over seeds and data (deepnmf_jax.parallel), on 8 simulated CPU devices and 2 processes.

Equalities with the single-device run are to float32 rounding, not bit for bit: splitting a batch
over devices (or a seed axis of 2 into two of 1) changes the order in which XLA sums, and Adam's
g / sqrt(v) amplifies those last-bit differences in tiny entries over the steps of a run.
"""

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import typing

import jax
import numpy as np
import pytest

from deepnmf_jax import errors
from deepnmf_jax.data import archives
from deepnmf_jax.training import loop as train_lib
from deepnmf_jax.training import parallel
from deepnmf_jax.training import program as compiled
from tests.runners import cache_dir, xla_flags
from tests.test_input_pipeline import make_cifar_archive
from tests.test_train import ROOT, final_state, tiny_config


def test_mesh_shape_rules():
    assert parallel.mesh_shape(5, 50, 8) == (5, 1)  # seeds first; 5 of 8 devices used
    assert parallel.mesh_shape(1, 50, 8) == (1, 5)  # one seed: split the batch of 50 five ways
    assert parallel.mesh_shape(2, 50, 8) == (2, 2)
    assert parallel.mesh_shape(4, 10, 8) == (4, 2)
    assert parallel.mesh_shape(5, 50, 1) == (1, 1)
    assert parallel.mesh_shape(2, 50, 8, seed_devices=1, data_devices=2) == (1, 2)
    with pytest.raises(ValueError, match="do not divide num_seeds"):
        parallel.mesh_shape(5, 50, 8, seed_devices=2)
    with pytest.raises(ValueError, match="do not divide batch_size"):
        parallel.mesh_shape(1, 50, 8, data_devices=4)
    with pytest.raises(ValueError, match="needs more than"):
        parallel.mesh_shape(4, 50, 8, seed_devices=4, data_devices=5)


def _assert_close(a, b):
    """Parameters within 1e-4 of each array's scale; the rest of the state (Adam's moments, whose
    second moment squares the gradients' rounding differences) within 1e-3."""

    def close(x, y, scale):
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=0, atol=scale * np.max(np.abs(y)))

    jax.tree_util.tree_map(lambda x, y: close(x, y, 1e-4), a["params"], b["params"])
    jax.tree_util.tree_map(lambda x, y: close(x, y, 1e-3), a, b)


# CNMF, not CNMF+1x1: the +1x1 models have biases that feed a BatchNorm, whose gradient is zero up
# to rounding noise, which Adam turns into +-lr steps: no two summation orders agree on them.
SHARDED = {"model.name": "cnmf", "tensorboard": False}


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    """The final state of a run on one device (seeds one after another: seed_loop map), by number
    of seeds, trained once for every test that compares against it."""
    states = {}

    def run(num_seeds: int):
        if num_seeds not in states:
            folder = tmp_path_factory.mktemp(f"single_{num_seeds}")
            config = tiny_config(num_seeds=num_seeds, **SHARDED)  # tiny_config: a 1 x 1 mesh
            train_lib.train_and_evaluate(config, folder)
            states[num_seeds] = final_state(folder)
        return states[num_seeds]

    return run


@pytest.mark.parametrize(
    "num_seeds,seed_devices,data_devices",
    [(2, 2, 1), (1, 1, 2), (2, 2, 2)],
    ids=["seeds", "data", "both"],
)
def test_sharded_runs_equal_single_device(
    single_device_run, tmp_path, num_seeds, seed_devices, data_devices
):
    mesh = {"mesh.seed_devices": seed_devices, "mesh.data_devices": data_devices}
    train_lib.train_and_evaluate(tiny_config(num_seeds=num_seeds, **SHARDED, **mesh), tmp_path)
    _assert_close(final_state(tmp_path), single_device_run(num_seeds))


def test_state_is_sharded_no_transfers_in_the_loop_and_one_compile():
    config = tiny_config(
        num_seeds=2, **{"model.name": "cnmf", "mesh.seed_devices": 2, "mesh.data_devices": 2}
    )
    run = compiled.build(config, 10, (32, 32, 3), steps_per_epoch=3)
    placement = run.placement
    states = run.init(placement.seed_keys([21, 22]))
    kernel = states.params["block1"]["a"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("seed")
    assert len(kernel.sharding.device_set) == 4 and kernel.addressable_shards[0].data.shape[0] == 1
    rng = np.random.default_rng(0)
    images = placement.put(rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8))
    labels = placement.put(rng.integers(0, 10, 30, dtype=np.int32))
    keys = placement.order_keys(config.data, [21, 22])
    functions = (run.train, run.predict, run.end_epoch, run.order)
    cache_sizes = []
    for epoch in (1, 2):
        order = run.order(keys, epoch, 30)
        with jax.transfer_guard("disallow"):  # the whole epoch runs without a host round trip
            for _ in range(3):
                states, _ = run.train(states, images, labels, order)
        probs, _ = run.predict(states, images)
        states = run.end_epoch(states, placement.put(np.ones(2, np.float32), placement.seeds))
        cache_sizes.append([fn._cache_size() for fn in functions])
    assert int(placement.fetch(states.step)[0]) == 6 and probs.shape == (2, 30, 10)
    assert cache_sizes[1] == cache_sizes[0]  # the second epoch compiled nothing new


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MESH_FLAGS = (
    "--config.num_seeds=2",
    "--config.num_epochs=2",
    "--config.batch_size=10",
    "--config.model.name=cnmf",
    "--config.model.width=0.125",
    "--config.data.train_limit=60",
    "--config.data.test_limit=50",
    "--config.progress=False",
    "--config.tensorboard=False",
    "--config.mesh.seed_devices=2",
    "--config.mesh.data_devices=2",
)


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: typing.ClassVar[list[str]] = []  # the paths asked for, in order

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


def _worker(md5, workdir, devices, cache, url, *flags):
    """A train.py process whose data is downloaded from ``url`` into ``cache``."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir()),
        XLA_FLAGS=xla_flags(devices),
        PYTHONUNBUFFERED="1",
    )
    data_flags = (
        "--config=configs/cifar10.py",
        f"--workdir={workdir}",
        "--config.data.source=download",
        f"--config.data.cache_dir={cache}",
        f"--config.data.download_url={url}",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "tests.distributed_worker", md5, *data_flags, *MESH_FLAGS, *flags],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_processes_behave_as_one_and_only_process_0_downloads(tmp_path):
    """2 processes x 2 CPU devices (gloo collectives) against 1 process x 4 devices, same mesh.
    The dataset is downloaded (from a local server) by process 0 alone, once; the other process
    waits for it and reads the cached archive; only process 0 writes the logs."""
    served = tmp_path / "served"
    served.mkdir()
    make_cifar_archive(served / "cifar-10-python.tar.gz", n=12)
    md5 = archives.md5sum(served / "cifar-10-python.tar.gz")
    handler = functools.partial(_CountingHandler, directory=str(served))
    _CountingHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    cache = tmp_path / "cache"
    address = f"127.0.0.1:{_free_port()}"
    try:
        processes = [
            _worker(
                md5,
                tmp_path / "multi",
                2,
                cache,
                url,
                f"--config.distributed.coordinator_address={address}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={rank}",
            )
            for rank in (0, 1)
        ]
        outputs = [p.communicate(timeout=300)[0] for p in processes]
        assert [p.returncode for p in processes] == [0, 0], outputs
        single = _worker(md5, tmp_path / "single", 4, cache, url)  # finds it in the cache
        output = single.communicate(timeout=300)[0]
        assert single.returncode == 0, output
    finally:
        server.shutdown()
        server.server_close()
    assert _CountingHandler.requests == ["/cifar-10-python.tar.gz"]
    assert "downloading" in outputs[0] and "downloading" not in outputs[1]
    # Only process 0 wrote the logs: one line per epoch, not two.
    assert len((tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()) == 2
    assert "epoch 1:" in outputs[0] and "epoch 1:" not in outputs[1]
    _assert_close(final_state(tmp_path / "multi"), final_state(tmp_path / "single"))


def test_seed_loop_map_equals_vmap(single_device_run, tmp_path):
    """Both seeds on one device, batched (vmap) or one after another (map, the single run's)."""
    train_lib.train_and_evaluate(tiny_config(num_seeds=2, seed_loop="vmap", **SHARDED), tmp_path)
    _assert_close(final_state(tmp_path), single_device_run(2))


def test_seed_loop_unroll_equals_map(single_device_run, tmp_path):
    """Both seeds as two copies of the step in one program (unroll) or in a lax.map (the single
    run's): the same computation per seed."""
    train_lib.train_and_evaluate(tiny_config(num_seeds=2, seed_loop="unroll", **SHARDED), tmp_path)
    _assert_close(final_state(tmp_path), single_device_run(2))


def test_seed_loop_choice():
    mesh_1 = parallel.make_mesh(2, 10, seed_devices=1, data_devices=1)
    mesh_2 = parallel.make_mesh(2, 10, seed_devices=2, data_devices=1)
    assert parallel.seed_loop("auto", mesh_1) == "map"  # CPU, seeds on one device
    assert parallel.seed_loop("auto", mesh_2) == "vmap"  # seeds split over devices
    assert parallel.seed_loop("vmap", mesh_1) == "vmap"
    assert parallel.seed_loop("unroll", mesh_2) == "unroll"
    with pytest.raises(errors.ConfigError, match="seed_loop"):
        parallel.seed_loop("scan", mesh_1)
