"""The --gpu-price / --cpu-price flags, shared by `ar-ray run` and `ar-ray sweep` (priced by ar_ray/lab/spend.py)."""

from __future__ import annotations

import click


def price_options(f):
    """Add --gpu-price (repeatable MODEL=USD/h) and --cpu-price to a command."""
    f = click.option("--cpu-price", type=float, default=None, help="USD per CPU core-hour for trainers without a GPU "
                     "(default: an estimate of 0.04).")(f)
    return click.option("--gpu-price", multiple=True, metavar="MODEL=USD/h",
                        help="USD per GPU-hour of a GPU model, e.g. H100=2.49 (repeatable; '*=2' for any other model). "
                             "Default: a built-in table of estimates.")(f)
