"""torchvision's AlexNet (`torchvision.models.alexnet`, whose IMAGENET1K_V1 weights load as they are).

What a `.pth` of torchvision's AlexNet selects on its own (`python -m alexnet_jax.predict
--weights=alexnet.pth --allow_pickle photo.jpg`); also a recipe to train or fine-tune that network:
- model.variant "torchvision": one tower, 64-192-384-256-256 kernels, conv1 padded by 2, no LRN
  ("One weird trick", Krizhevsky 2014), dropout on the inputs of fc6 and fc7 as torchvision places it;
- model.dropout_scaling "inverted": PyTorch's dropout divides the kept units by 1 - rate in training,
  so the weights expect no factor at test time;
- data.normalisation "torchvision": RGB (x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
  torchvision's evaluation transform (Resize(256), CenterCrop(224), ToTensor, Normalize) with the
  resize of section 2 (shorter side to 256, bilinear with antialiasing, whole pixels).
The training fields stay the paper's (configs/paper.py).
"""

from alexnet_jax.config_files import sibling

paper = sibling(__file__, "paper")  # by path: no `configs` package needed


def get_config():
    """Returns the paper's config with torchvision's network and input."""
    config = paper["get_config"]()
    config.model.variant = "torchvision"
    config.model.lrn = False
    config.model.dropout_scaling = "inverted"
    config.model.image_size = 224
    config.data.resize_size = 256
    config.data.normalisation = "torchvision"
    return config
