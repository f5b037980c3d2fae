"""VGG-16 (configuration D) with the same pipeline and recipe as configs/paper.py.

Simonyan and Zisserman (2014) trained with batch 256, momentum 0.9, weight decay 5e-4, dropout
0.5 on fc6/fc7, learning rate 0.01 divided by 10 on validation plateaus (three times), 224 x 224
random crops with flips and the AlexNet colour shift. Only the differences from paper.py are set:
`python -m alexnet_jax.main --config=configs/vgg16.py --workdir=runs/vgg16`.
"""

from alexnet_jax.config_files import sibling

paper = sibling(__file__, "paper")  # by path: no `configs` package needed


def get_config():
    """Returns the paper config with VGG-16 and its batch size."""
    config = paper["get_config"]()
    config.model.name = "vgg16"
    config.model.lrn = False  # VGG-16 has no LRN (configuration A-LRN showed it did not help).
    config.optim.batch_size = 256
    config.parallel.model = 1  # one tower
    return config
