"""The paper's recipe: AlexNet on ILSVRC-2012, as in Krizhevsky, Sutskever and Hinton (2012).

Every hyper-parameter of the paper lives here, with the section it comes from. Other configs start
from `get_config()` and change a few fields. Override any field on the command line:
`python -m alexnet_jax.main --config=configs/paper.py --config.optim.learning_rate=0.02`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the paper's configuration."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # Root of every random key: init, dropout, augmentation, shuffling.

    config.model = model = ml_collections.ConfigDict()
    model.name = "alexnet"  # "alexnet" | "vgg16" (configs/vgg16.py).
    model.variant = "paper"  # "paper": two towers (sec. 3.5) | "one_tower": sec. 3.2's half-width
    # comparison net on one GPU | "torchvision": single tower, no LRN.
    model.num_classes = 1000  # ILSVRC classes (sec. 2).
    model.image_size = 224  # Crop side fed to conv1 (sec. 4.1); 227 works too, no padding.
    model.lrn = True  # Local response normalisation after conv1 and conv2 (sec. 3.3).
    model.lrn_k = 2.0  # Sec. 3.3: k = 2 (Caffe's bvlc_alexnet uses 1).
    model.lrn_n = 5  # Sec. 3.3: window of n = 5 adjacent channels within a tower.
    model.lrn_alpha = 1e-4  # Sec. 3.3, as printed (PyTorch/Caffe would need 5e-4).
    model.lrn_beta = 0.75  # Sec. 3.3.
    model.lrn_span = "tower"  # Sec. 3.3: windows within a tower's channels | "all": Caffe's, across both.
    model.dropout_rate = 0.5  # Sec. 4.2: on fc6 and fc7 outputs, training only.
    # Sec. 4.2: "paper": no scaling in training, outputs times 1 - rate at test time | "inverted": kept
    # units divided by 1 - rate in training (PyTorch's and Caffe's; their weights were trained so).
    model.dropout_scaling = "paper"  # Sec. 4.2, as above.
    model.fc_width = 4096  # Neurons in fc6 and fc7 (sec. 3.5).
    model.activation = "relu"  # Sec. 3.1: ReLU after every layer but fc8 ("tanh" to compare).
    model.pool_window = 3  # Sec. 3.4: overlapping pooling, z = 3 ...
    model.pool_stride = 2  # ... and s = 2 (z = s = 2 is the non-overlapping comparison).
    model.init_scheme = "paper"  # Sec. 5: N(0, 0.01^2); "cuda-convnet" | "caffe" variants.
    # Sec. 5: the biases of conv2, conv4, conv5, fc6 and fc7, which the paper sets to 1 "to provide the
    # ReLUs with positive inputs"; None keeps the scheme's (1, or Caffe's 0.1). tanh wants 0 (configs/ablations.py).
    model.init_bias = ml_collections.config_dict.placeholder(float)  # Sec. 5, as above.
    model.dtype = "float32"  # Compute dtype: "float32" | "bfloat16"; parameters stay float32.
    # Implementations with the same numbers; "auto" keeps the hand-written ones unless another was
    # measured at least 3 % faster on the backend (alexnet_jax/networks/layers.py, BENCHMARKS.md):
    model.grouped_conv = "auto"  # "split" (two half convolutions) | "feature_group".
    model.pool_gradient = "auto"  # "custom" (hand-written) | "xla" (select-and-scatter).
    model.lrn_gradient = "auto"  # "custom" (hand-written) | "autodiff".

    config.data = data = ml_collections.ConfigDict()
    data.source = "tfds"  # "tfds" | "folder" | "records" | "digits" | "fake".
    data.name = "imagenet2012"  # tfds dataset name (sec. 2: ILSVRC-2012).
    data.data_dir = ""  # tfds data_dir or image-folder root; "" = tfds default.
    data.train_split = "train"
    data.eval_split = "validation"  # The 50,000 validation images (sec. 6 reports on them).
    data.resize_size = 256  # Shorter side to 256, centre 256 x 256 crop (sec. 2).
    data.random_crop = True  # Random 224 x 224 patches at training time (sec. 4.1).
    data.random_flip = True  # Horizontal reflections with probability 1/2 (sec. 4.1).
    data.pca_lighting_std = 0.1  # Sigma of the PCA colour alphas (sec. 4.1); 0 disables.
    # Sec. 2: "mean_image": 0-255 RGB minus the training set's mean image | "none": 0-255 RGB as it is |
    # "torchvision": (x / 255 - mean) / std per channel | "caffe": 0-255 minus Caffe's mean pixel (configs/caffe.py).
    data.normalisation = "mean_image"  # Sec. 2, as above.
    data.classes = ""  # Only these classes, comma-separated names, relabelled 0.. in this order; "" = all.
    data.fake_train_size = 1024  # source="fake": random training images,
    data.fake_eval_size = 256  # ... evaluation images,
    data.fake_num_classes = 1000  # ... and classes.

    config.optim = optim = ml_collections.ConfigDict()
    optim.batch_size = 128  # Global batch (sec. 5).
    optim.learning_rate = 0.01  # Initial rate, all layers (sec. 5).
    optim.momentum = 0.9  # Sec. 5.
    optim.weight_decay = 5e-4  # Sec. 5, inside the momentum and scaled by the rate.
    optim.bias_lr_multiplier = 1.0  # Original code / Caffe: 2.0.
    optim.bias_weight_decay = True  # Original code / Caffe: False.

    config.schedule = schedule = ml_collections.ConfigDict()
    schedule.kind = "plateau"  # "plateau" (sec. 5) | "step" | "cosine" | "constant".
    schedule.factor = 0.1  # Divide by 10 on a plateau (sec. 5).
    schedule.patience = 2  # Evaluations without improvement before a cut.
    schedule.min_delta = 1e-3  # An improvement smaller than this (in error) does not count.
    schedule.max_cuts = 3  # "Reduced three times prior to termination" (sec. 5).
    schedule.step_epochs = (30, 60, 80)  # For kind="step": epochs at which to cut.

    config.train = train = ml_collections.ConfigDict()
    train.num_epochs = 90  # "Roughly 90 cycles through the training set" (sec. 5).
    train.log_every_steps = 100
    train.eval_every_epochs = 1.0  # Validation error feeds the plateau schedule.
    train.checkpoint_every_steps = 2000
    train.keep_checkpoints = 3  # Most recent checkpoints kept, besides the best one.
    # Fine-tuning (docs/weights.md). A start, not a resume: a resumed run continues from its checkpoint.
    train.init_from = ""  # A weights file, workdir or checkpoint directory: its layers of matching shape.
    train.reinit = ""  # Layers initialised afresh although their shape matches (e.g. "fc8"), comma-separated.
    train.freeze = ""  # Layers never updated (e.g. "conv1,conv2"): no update, momentum or weight decay.
    # Fields a rerun in the same workdir may change although their rule refuses it (comma-separated,
    # e.g. "model.dropout_rate,seed"; "data": other data). docs/training.md lists every field's rule.
    train.allow_changes = ""
    train.lock_workdir = True  # Lock the workdir for the run's life; False only where files cannot be locked.

    config.eval = evaluation = ml_collections.ConfigDict()
    evaluation.batch_size = 256  # Global eval batch; the last one is padded and masked.
    evaluation.ten_crop = True  # Sec. 4.1: average softmax of 4 corners + centre, flipped too.

    config.parallel = parallel = ml_collections.ConfigDict()
    parallel.model = 1  # 2: the paper's two towers on two devices (sec. 3.2).
    parallel.data = -1  # Data-parallel replicas; -1 = every device left.
    parallel.micro_batch = -1  # Examples per chunk of the conv layers; -1: 8 on CPUs at 224 px, else whole; 0: whole.
    parallel.distributed = False  # Call jax.distributed.initialize() (several hosts).
    return config
