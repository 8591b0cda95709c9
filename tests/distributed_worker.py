"""``python -m tests.distributed_worker MD5 TRAIN_FLAGS...``: ``deepnmf train`` whose CIFAR-10 archive is
downloaded from a test server. The expected MD5 becomes the served archive's, so the real download
path (announce, fetch, verify, cache) runs in every process of a multi-process test."""

import dataclasses
import sys

from deepnmf_jax.data import pipeline as input_pipeline


def main(argv: list[str]) -> int:
    md5, flags = argv[0], argv[1:]
    spec = input_pipeline.DATASETS["cifar10"]
    input_pipeline.DATASETS["cifar10"] = dataclasses.replace(spec, files={spec.archive: md5})
    from deepnmf_jax.cli import main as deepnmf

    return deepnmf(["train", *flags])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
