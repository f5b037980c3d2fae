"""Caffe's bvlc_alexnet (BVLC model zoo; its weights as a NumPy `.npy` dict, as caffe-tensorflow writes it).

What such a `.npy` selects on its own (`python -m alexnet_jax.predict --weights=bvlc_alexnet.npy
--allow_pickle photo.jpg`), from bvlc_alexnet's deploy.prototxt and solver:
- the paper's two-tower network (conv2, conv4, conv5 with group: 2) on 227 x 227 crops (no padding);
- LRN with k = 1 and alpha = 1e-4 / 5 = 2e-5 in the paper's form (Caffe divides alpha by local_size 5),
  over all 96 and 256 channels of norm1 and norm2 (`lrn_span="all"`), not within each group;
- model.dropout_scaling "inverted": Caffe's dropout scales the kept units by 1 / (1 - rate) in training;
- data.normalisation "caffe": 0-255 pixels minus Caffe's ImageNet mean pixel (B, G, R) = (104.0, 116.7,
  122.7). Caffe's conv1 reads BGR: its input channels are reversed when the file is loaded, so that the
  network here reads RGB like every other;
- the solver: batch 256, biases learning twice as fast without weight decay, Caffe's initialisation
  (fc6/fc7 std 0.005, biases 0.1), the rate divided by 10 every 100,000 iterations (about 20 epochs).
Caffe warped every image to 256 x 256; the resize here keeps the aspect ratio (section 2).
"""

from alexnet_jax.config_files import sibling

paper = sibling(__file__, "paper")  # by path: no `configs` package needed


def get_config():
    """Returns the paper's config with bvlc_alexnet's network, input and solver."""
    config = paper["get_config"]()
    config.model.image_size = 227
    config.model.lrn_k = 1.0
    config.model.lrn_alpha = 2e-5
    config.model.lrn_span = "all"
    config.model.dropout_scaling = "inverted"
    config.model.init_scheme = "caffe"
    config.data.resize_size = 256
    config.data.normalisation = "caffe"
    config.optim.batch_size = 256
    config.optim.bias_lr_multiplier = 2.0
    config.optim.bias_weight_decay = False
    config.schedule.kind = "step"
    config.schedule.step_epochs = (20, 40, 60, 80)
    return config
