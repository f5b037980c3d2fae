"""A seconds-long run on made-up data: checks that the whole system works, learns nothing real.

Fake images (noise tinted by class, 4 classes), 64 x 64 crops, fc6 and fc7 narrowed to 512 neurons,
the original code's initialisation (std 0.03 in conv3-conv5: on this data the network learns within
six epochs, where the paper's and Caffe's take longer to leave chance), a few epochs; evaluations
(every 8 steps) and checkpoints (every 5) fall on different steps, as in the paper's recipe. Used by
the tests of the training machinery (resumption, preemption, device layouts) and handy after an
install or a code change: `python -m alexnet_jax.main --config=configs/smoke.py --workdir=/tmp/smoke`.
"""

from configs import default


def get_config():
    """Returns the default config shrunk to a smoke test."""
    config = default.get_config()
    config.data.source = "fake"
    config.data.name = "fake"
    config.data.fake_train_size = 128
    config.data.fake_eval_size = 40
    config.data.fake_num_classes = 4
    config.model.num_classes = 4
    config.model.fc_width = 512
    config.model.init_scheme = "cuda-convnet"
    config.optim.batch_size = 16
    config.eval.batch_size = 16
    config.train.num_epochs = 6
    config.train.log_every_steps = 1
    config.train.checkpoint_every_steps = 5
    return config
