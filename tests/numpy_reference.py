"""An independent NumPy forward pass of AlexNet in PyTorch's conventions (NCHW, OIHW, CHW flatten).

Written from the paper's formulas (sections 3.3-3.5), sharing no code with `alexnet_jax`, so that agreement with it
checks the layout conversion and the model's arithmetic together.
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
    """Section 3.3, the sum running over channels of the same tower only."""
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


def alexnet_forward(weights, images_nchw, conv1_pad=((0, 0), (0, 0)), towers=2, use_lrn=True, k=2.0, alpha=1e-4):
    """Logits (eval mode) from `<layer>.weight/.bias` arrays: the paper's two-tower network, or
    with towers=1, use_lrn=False and conv1_pad=((2, 2), (2, 2)) torchvision's single tower."""

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
    x = relu(x @ w["fc6.weight"].T + w["fc6.bias"])
    x = relu(x @ w["fc7.weight"].T + w["fc7.bias"])
    return x @ w["fc8.weight"].T + w["fc8.bias"]


def random_torch_weights(rng, num_classes=1000, pool5_side=6, std=0.01, variant="paper"):
    """Random weights in PyTorch layout: the paper network (grouped kernels (out, in/2, kh, kw))
    or torchvision's single tower."""
    if variant == "paper":
        convs = {
            "conv1": (96, 3, 11, 11),
            "conv2": (256, 48, 5, 5),
            "conv3": (384, 256, 3, 3),
            "conv4": (384, 192, 3, 3),
            "conv5": (256, 192, 3, 3),
        }
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
