"""Independent NumPy forward passes of AlexNet in PyTorch's and Caffe's conventions (NCHW, OIHW, CHW flatten).

Written from the paper's formulas (sections 3.3-3.5) and from Caffe's layer definitions (bvlc_alexnet's
deploy.prototxt: LRN over all channels of a layer with alpha divided by local_size and k = 1, grouped
convolutions, max-pooling with the output size rounded up, inverted dropout), sharing no code with
`alexnet_jax`, so that agreement with it checks the layout conversion, the input normalisation and the
model's arithmetic together.
"""

import numpy as np


def conv2d(x, w, b, stride, pad, groups):
    """x (N, C, H, W), w (O, C/groups, kh, kw); pad ((top, bottom), (left, right))."""
    x = np.pad(x, ((0, 0), (0, 0), pad[0], pad[1]))
    kh, kw = w.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    c_in, c_out = x.shape[1] // groups, w.shape[0] // groups
    outs = []
    for g in range(groups):
        patch = windows[:, g * c_in : (g + 1) * c_in]  # N, Cg, Ho, Wo, kh, kw
        kernel = w[g * c_out : (g + 1) * c_out]  # Og, Cg, kh, kw
        outs.append(np.einsum("nchwij,ocij->nohw", patch, kernel, optimize=True))
    return np.concatenate(outs, axis=1) + b[None, :, None, None]


def lrn(x, towers, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """Section 3.3, the sum running over channels of the same tower only (towers=1: over all channels)."""
    out = np.empty_like(x)
    per_tower = x.shape[1] // towers
    for i in range(x.shape[1]):
        lo_tower = (i // per_tower) * per_tower
        lo = max(lo_tower, i - n // 2)
        hi = min(lo_tower + per_tower - 1, i + n // 2)
        s = (x[:, lo : hi + 1] ** 2).sum(axis=1)
        out[:, i] = x[:, i] / (k + alpha * s) ** beta
    return out


def max_pool(x):
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    return windows.max(axis=(-1, -2))


def caffe_max_pool(x, kernel=3, stride=2):
    """Caffe's pooling: output side ceil((H - kernel) / stride) + 1, the last window cut at the edge."""
    out = [-(-(side - kernel) // stride) + 1 for side in x.shape[2:]]
    extra = [(o - 1) * stride + kernel - side for o, side in zip(out, x.shape[2:])]
    padded = np.pad(x, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return windows.max(axis=(-1, -2))


# Caffe's ILSVRC-2012 mean pixel (B, G, R), as its classification example subtracts it.
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434])


def caffe_preprocess(rgb_crops):
    """Caffe's input: (N, H, W, 3) RGB 0-255 pixels -> (N, 3, H, W) BGR minus the mean pixel (the
    Transformer's channel_swap (2, 1, 0), raw_scale 255 and mean of Caffe's python example)."""
    bgr = np.asarray(rgb_crops, np.float64)[..., ::-1] - CAFFE_MEAN_BGR
    return bgr.transpose(0, 3, 1, 2)


def caffe_alexnet_forward(blobs, images_bgr_nchw):
    """Logits of bvlc_alexnet's deploy.prototxt (TEST phase) from Caffe-native blobs
    `{layer: (weight OIHW or (out, in), bias)}`: conv1 11/4, relu, norm1 (local_size 5, alpha 1e-4,
    beta 0.75, k 1, across all 96 channels), pool 3/2; conv2 5 pad 2 group 2, relu, norm2, pool;
    conv3 pad 1; conv4, conv5 pad 1 group 2; pool5; fc6, fc7 (dropout: nothing at test time), fc8."""
    w = {name: (np.asarray(k, np.float64), np.asarray(b, np.float64)) for name, (k, b) in blobs.items()}

    def relu(v):
        return np.maximum(v, 0)

    def norm(v):  # Caffe: scale = k + alpha / local_size * sum of squares over the window
        return lrn(v, towers=1, k=1.0, n=5, alpha=1e-4 / 5, beta=0.75)

    x = np.asarray(images_bgr_nchw, np.float64)
    x = caffe_max_pool(norm(relu(conv2d(x, *w["conv1"], 4, ((0, 0), (0, 0)), 1))))
    x = caffe_max_pool(norm(relu(conv2d(x, *w["conv2"], 1, ((2, 2), (2, 2)), 2))))
    x = relu(conv2d(x, *w["conv3"], 1, ((1, 1), (1, 1)), 1))
    x = relu(conv2d(x, *w["conv4"], 1, ((1, 1), (1, 1)), 2))
    x = caffe_max_pool(relu(conv2d(x, *w["conv5"], 1, ((1, 1), (1, 1)), 2)))
    x = x.reshape(x.shape[0], -1)  # Caffe's InnerProduct reads the blob in C, H, W order
    x = relu(x @ w["fc6"][0].T + w["fc6"][1])
    x = relu(x @ w["fc7"][0].T + w["fc7"][1])
    return x @ w["fc8"][0].T + w["fc8"][1]


def caffe_tensorflow_form(blobs):
    """Caffe-native blobs in the NumPy dict form caffe-tensorflow writes, `{layer: {"weights", "biases"}}`:
    conv kernels HWIO, fc kernels (in, out), fc6's rows reordered from Caffe's C, H, W to H, W, C
    (as its transformer does for a fully connected layer that reads a spatial blob). Colour order untouched."""
    out = {}
    for name, (weight, bias) in blobs.items():
        weight = np.asarray(weight, np.float32)
        if weight.ndim == 4:
            kernel = weight.transpose(2, 3, 1, 0)
        elif name == "fc6":
            c = blobs["conv5"][0].shape[0]
            side = int(round((weight.shape[1] // c) ** 0.5))
            kernel = weight.reshape(-1, c, side, side).transpose(2, 3, 1, 0).reshape(-1, weight.shape[0])
        else:
            kernel = weight.T
        out[name] = {"weights": np.ascontiguousarray(kernel), "biases": np.asarray(bias, np.float32)}
    return out


# The paper's convolution kernels as PyTorch and Caffe store them: (out, in / groups, kh, kw).
PAPER_CONV_SHAPES = {
    "conv1": (96, 3, 11, 11),
    "conv2": (256, 48, 5, 5),
    "conv3": (384, 256, 3, 3),
    "conv4": (384, 192, 3, 3),
    "conv5": (256, 192, 3, 3),
}


def random_caffe_blobs(rng, gain=1.0, num_classes=1000):
    """Random bvlc_alexnet blobs in Caffe's native shapes, He-scaled by `gain` so that the logits spread."""
    shapes = {
        **PAPER_CONV_SHAPES,
        "fc6": (4096, 256 * 6 * 6),
        "fc7": (4096, 4096),
        "fc8": (num_classes, 4096),
    }
    blobs = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        weight = rng.standard_normal(shape) * gain * np.sqrt(2.0 / fan_in)
        blobs[name] = (weight.astype(np.float32), rng.uniform(-0.1, 0.1, shape[0]).astype(np.float32))
    return blobs


def alexnet_forward(
    weights, images_nchw, conv1_pad=((0, 0), (0, 0)), towers=2, use_lrn=True, k=2.0, alpha=1e-4, dropout_scale=1.0
):
    """Logits (eval mode) from `<layer>.weight/.bias` arrays: the paper's two-tower network, or
    with towers=1, use_lrn=False and conv1_pad=((2, 2), (2, 2)) torchvision's single tower.
    `dropout_scale` multiplies the outputs of fc6 and fc7 (section 4.2's test-time 0.5 for the paper's dropout)."""

    def relu(v):
        return np.maximum(v, 0)

    norm = (lambda v: lrn(v, towers, k=k, alpha=alpha)) if use_lrn else (lambda v: v)
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    x = images_nchw.astype(np.float64)
    x = max_pool(norm(relu(conv2d(x, w["conv1.weight"], w["conv1.bias"], 4, conv1_pad, 1))))
    x = max_pool(norm(relu(conv2d(x, w["conv2.weight"], w["conv2.bias"], 1, ((2, 2), (2, 2)), towers))))
    x = relu(conv2d(x, w["conv3.weight"], w["conv3.bias"], 1, ((1, 1), (1, 1)), 1))
    x = relu(conv2d(x, w["conv4.weight"], w["conv4.bias"], 1, ((1, 1), (1, 1)), towers))
    x = max_pool(relu(conv2d(x, w["conv5.weight"], w["conv5.bias"], 1, ((1, 1), (1, 1)), towers)))
    x = x.reshape(x.shape[0], -1)  # CHW flatten, as PyTorch's torch.flatten.
    x = relu(x @ w["fc6.weight"].T + w["fc6.bias"]) * dropout_scale
    x = relu(x @ w["fc7.weight"].T + w["fc7.bias"]) * dropout_scale
    return x @ w["fc8.weight"].T + w["fc8.bias"]


def random_torch_weights(rng, num_classes=1000, pool5_side=6, std=0.01, variant="paper"):
    """Random weights in PyTorch layout: the paper network (grouped kernels (out, in/2, kh, kw))
    or torchvision's single tower."""
    if variant == "paper":
        convs = PAPER_CONV_SHAPES
    else:
        convs = {
            "conv1": (64, 3, 11, 11),
            "conv2": (192, 64, 5, 5),
            "conv3": (384, 192, 3, 3),
            "conv4": (256, 384, 3, 3),
            "conv5": (256, 256, 3, 3),
        }
    shapes = {
        **convs,
        "fc6": (4096, 256 * pool5_side * pool5_side),
        "fc7": (4096, 4096),
        "fc8": (num_classes, 4096),
    }
    weights = {}
    for name, shape in shapes.items():
        weights[f"{name}.weight"] = (rng.standard_normal(shape) * std).astype(np.float32)
        weights[f"{name}.bias"] = rng.uniform(0, 1, shape[0]).astype(np.float32)
    return weights
