"""structprune: structured pruning of convolutional networks (Anwar, Hwang & Sung, 2017)."""

__version__ = "0.1.0"
