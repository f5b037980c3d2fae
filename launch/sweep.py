"""Hyper-parameter grids and the ablation study: `python launch/sweep.py --help` (alexnet_jax/sweep.py)."""

import sys

from alexnet_jax import sweep

if __name__ == "__main__":
    sys.exit(sweep.main(sys.argv[1:]))
