"""Builds the CIFAR-10 sample bundled with the package: ``deepnmf_jax/data/cifar10_sample.npz``.

    python scripts/make_sample.py --data_dir ../shared/data/cifar10

The subset is fixed: the first 100 training images of each class and the first 50 test images of each
class, in the original order of the official CIFAR-10 python archive (1,000 train, 500 test images).
"""

import argparse
import hashlib
import pathlib

import numpy as np

from deepnmf_jax.data import pipeline as input_pipeline

TRAIN_PER_CLASS = 100
TEST_PER_CLASS = 50
OUT = pathlib.Path(__file__).resolve().parent.parent / "deepnmf_jax" / "data" / "cifar10_sample.npz"


def first_per_class(split, per_class):
    keep = np.concatenate([np.flatnonzero(split.labels == c)[:per_class] for c in range(10)])
    keep.sort()
    return split.images[keep], split.labels[keep].astype(np.uint8), keep


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", required=True)
    args = parser.parse_args()
    data = input_pipeline.load_dataset("cifar10", source="folder", data_dir=args.data_dir)
    train_images, train_labels, train_index = first_per_class(data.train, TRAIN_PER_CLASS)
    test_images, test_labels, test_index = first_per_class(data.test, TEST_PER_CLASS)
    np.savez_compressed(
        OUT,
        train_images=train_images,
        train_labels=train_labels,
        train_index=train_index.astype(np.int32),
        test_images=test_images,
        test_labels=test_labels,
        test_index=test_index.astype(np.int32),
    )
    for name, array in [("train images", train_images), ("test images", test_images)]:
        print(name, array.shape, hashlib.sha256(array.tobytes()).hexdigest())
    print("wrote", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
