"""A seconds-long run on made-up data: checks that the whole system works, learns nothing real.

Fake images (noise tinted by class, 4 classes), 64 x 64 crops, a few epochs. Used by the tests
(training lowers the loss; kill-and-resume, SIGTERM and multi-device runs shortened) and handy after an install or a code change:
`python -m alexnet_jax.main --config=configs/smoke.py --workdir=/tmp/smoke`.
"""

from configs import default


def get_config():
    """Returns the default config shrunk to a smoke test."""
    config = default.get_config()
    config.data.source = "fake"
    config.data.name = "fake"
    config.data.fake_train_size = 256
    config.data.fake_eval_size = 40
    config.data.fake_num_classes = 4
    config.model.num_classes = 4
    config.optim.batch_size = 32
    config.eval.batch_size = 16
    config.train.num_epochs = 12
    config.train.log_every_steps = 1
    config.train.checkpoint_every_steps = 4
    return config
