"""Fashion-MNIST (paper appendix A): 28x28 grey images cropped to 24x24, crop-only augmentation.

    deepnmf train --config fashion_mnist --workdir runs/fmnist \\
        --config.data.data_dir=PATH_WITH_THE_FOUR_IDX_FILES

As in the reference (``tools/get_the_data.py:84``): RandomCrop 24 in training, CenterCrop 24 in
evaluation, no flip, no colour jitter. The paper reports Fashion-MNIST only in its appendix; there is
no reference number in the code repository to reproduce.
"""

from deepnmf_jax.configs import default


def get_config():
    config = default.get_config()
    config.data.name = "fashion_mnist"
    config.augment.crop_size = 24
    config.augment.flip = False
    config.augment.brightness = 0.0
    config.augment.contrast = 0.0
    config.augment.saturation = 0.0
    config.augment.hue = 0.0
    return config
