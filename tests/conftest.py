"""Shared test settings."""

import torch

# Tiny models gain nothing from several threads, and on a shared 2-core machine threads fight each other.
torch.set_num_threads(1)
