"""The reference's training recipe (mahbodnr/deep_nmf's run_network_train.py and configs; the
docs' "where the paper and its code differ"); every other config derives from this one.

Not meant to be run directly: use ``configs/cifar10.py``, ``configs/fashion_mnist.py`` or
``configs/cifar100.py``.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 21  # seed k of num_seeds is seed + k (the reference's default rand_seed is 21)
    config.num_seeds = 5  # replicas trained together (vmap over a leading seed axis)
    config.num_epochs = 500  # upper bound; the run stops earlier when every lr < optim.stop_lr
    config.batch_size = 50
    config.eval_batch_size = 50  # BatchNorm uses batch statistics in evaluation too: keep 50
    # "reference": (KL + 0.5 MSE)/1.5 summed over the batch; "paper": eq. 21
    config.loss = "reference"
    config.label_smoothing = 0.0  # targets (1 - a) onehot + a / classes in either loss

    config.model = ml_collections.ConfigDict()
    config.model.name = "cnmf_1x1"  # cnn | cnmf | cnn_1x1 | cnmf_1x1
    config.model.width = 1.0  # multiplies the hidden widths 32, 64, 96
    config.model.groups = 1  # groups of blocks 2 and 3 (a-layers and 1x1 layers alike)
    config.model.groups_nmf = config_dict.placeholder(int)  # a-layer groups (None: model.groups)
    config.model.groups_mix = config_dict.placeholder(int)  # 1x1-layer groups (None: model.groups)
    config.model.iterations = 20  # NMF fixed-point iterations
    # Training steps may run fewer NMF iterations (a recipe option: the model, and evaluation, keep
    # model.iterations): train_iterations (0: model.iterations) in the first train_iterations_epochs
    # epochs (0: in every epoch)
    config.model.train_iterations = 0
    config.model.train_iterations_epochs = 0
    config.model.epsilon = config_dict.placeholder(float)  # None: the paper's update
    # NMF backward: approximate (paper) | unrolled | implicit | local_kl | local_mse
    config.model.gradient = "approximate"
    config.model.remat = False  # with gradient="unrolled": rematerialise each NMF iteration
    config.model.batch_norm = "batch"  # "batch" (reference) | "running"
    # NMF loops run over chunks of positions of about this many bytes (cache-sized); None:
    # automatic (16 MiB on a CPU, no chunking on accelerators), 0: never.
    config.model.chunk_bytes = config_dict.placeholder(int)
    # NMF loops pad the inputs S of a layer with zeros to a multiple of this (the same codes; the
    # products run on whole vectors); None: automatic (16 on a CPU, none on accelerators), 0: never.
    config.model.pad_inputs = config_dict.placeholder(int)
    # Matrix products of the NMF loops: "float32" (HIGHEST) | "bfloat16" (mixed: bf16 inputs,
    # float32 accumulation; h and the divisions stay float32) | "tf32" (Precision.DEFAULT)
    config.model.precision = "float32"
    # The NMF loops' lax.fori_loop: 0 rolled (the default), -1 fully unrolled, k: k iterations
    # per trip (the same values; on GPUs fewer loop launches)
    config.model.unroll = 0
    # CNN a-layers: "matmul" (raw patches @ W / patch sums) | "conv" (a convolution / patch sums)
    # | "patches" (the reference's order: normalise each patch, then the linear map); all equal
    config.model.patch_conv = "auto"  # models.config.resolve_patch_conv
    # The last block's 1x1 layer: "reference" (ReLU + L1 over the class channels first, where a
    # class channel negative on every image gets no gradient) | "linear" (a plain 1x1 conv)
    config.model.head = "reference"
    # BatchNorm in front of every ReLU at 1x1 too (blocks 3-4; the reference has none there, and a
    # channel <= 0 on every image then gets no gradient and can stay dead, e.g. CNN+1x1's block 3)
    config.model.batch_norm_1x1 = False
    config.model.check_inputs = False  # checkify: NaN/negative NMF inputs stop the step, named

    config.data = ml_collections.ConfigDict()
    config.data.name = "cifar10"  # cifar10 | cifar100 | fashion_mnist
    config.data.source = "auto"  # auto | folder | tfds | download | sample
    config.data.data_dir = ""  # folder with the archives (source folder/auto)
    config.data.cache_dir = "~/.cache/deepnmf_jax"  # downloads go here
    config.data.download_url = ""  # base URL replacing the official one (mirror)
    config.data.train_limit = 0  # use only the first N training images (0: all)
    config.data.test_limit = 0  # use only the first N test images (0: all)
    # Hold out N training images (a fixed permutation) to choose best/ on; 0: the reference's
    # protocol (no validation split, best/ on test accuracy); 5000 recommended.
    config.data.validation_size = 0
    config.data.order = "fixed"  # "fixed": one order for every seed (reference) | "per_seed"
    config.data.order_seed = 0  # the reference seeds its shuffler with 0

    config.augment = ml_collections.ConfigDict()
    config.augment.crop_size = 28  # random crop in training, centre crop in evaluation
    config.augment.flip = True
    config.augment.brightness = 0.5  # torchvision ColorJitter(0.5, 0.1, 0.1, 0.15)
    config.augment.contrast = 0.1
    config.augment.saturation = 0.1
    config.augment.hue = 0.15
    config.augment.granularity = "batch"  # "batch": one draw per batch (reference) | "sample"

    config.optim = ml_collections.ConfigDict()
    config.optim.lr_a = 0.01  # NMF / CNN a-layers (the code; the paper says 0.001)
    config.optim.lr_b = 0.001  # 1x1 layers
    config.optim.lr_bn = 0.001  # BatchNorm scale and bias
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.plateau_factor = 0.1  # torch ReduceLROnPlateau defaults, stepped once per epoch
    config.optim.plateau_patience = 10  # in torch's sense: reduce on the 11th bad epoch
    config.optim.plateau_rtol = 1e-4
    config.optim.plateau_cooldown = 0
    config.optim.stop_lr = 1e-9  # stop when every learning rate is below this
    # "plateau" (the reference) | "cosine" (warm-up, then cosine decay over num_epochs) |
    # "onecycle" (optax's cosine one-cycle); the rates above are the peak rates of each group
    config.optim.schedule = "plateau"
    config.optim.warmup_epochs = 0.0  # cosine / onecycle: epochs to reach the peak
    config.optim.initial_lr_fraction = 0.04  # cosine / onecycle: start at this fraction of peak
    config.optim.final_lr_fraction = 0.0  # cosine: end value; onecycle: must be > 0
    config.optim.weight_decay = 0.0  # AdamW's decoupled decay of the conv kernels (not NMF U)
    config.optim.ema_decay = 0.0  # evaluate an exponential moving average of the parameters
    # Scale lr_* with batch_size / reference_batch_size: "none" | "linear" | "sqrt"
    config.optim.lr_batch_scaling = "none"
    config.optim.reference_batch_size = 50

    # How the seeds run inside one step: "vmap" (batched), "map" (one after another, a lax.map),
    # "unroll" (one copy of the step per seed: no loop, compile time x seeds), or "auto" (map on a
    # CPU whose seed axis is not split over devices: XLA's CPU backend is slow on the batched NMF
    # products; vmap elsewhere).
    config.seed_loop = "auto"

    config.mesh = ml_collections.ConfigDict()
    config.mesh.seed_devices = 0  # devices the seed axis is split over (0: automatic, seeds first)
    config.mesh.data_devices = 0  # devices each batch is split over (0: automatic)

    config.distributed = ml_collections.ConfigDict()  # jax.distributed (multi-host); empty: single
    config.distributed.coordinator_address = (
        ""  # host:port of process 0 (or JAX_COORDINATOR_ADDRESS)
    )
    config.distributed.num_processes = 0  # (or JAX_NUM_PROCESSES)
    config.distributed.process_id = -1  # (or JAX_PROCESS_ID)
    config.distributed.auto_detect = False  # let JAX detect a cluster (SLURM, Open MPI, ...)

    config.checkpoint_every_epochs = 1
    config.log_every_steps = 10  # how often losses are fetched (NaN check, progress bar)
    config.progress = True  # progress bars
    config.tensorboard = True  # TensorBoard event files in workdir/tensorboard
    return config
