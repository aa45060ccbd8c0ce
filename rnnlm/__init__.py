"""rnnlm: train recurrent language models on plain text, then sample, score and measure them."""

__version__ = "0.1.0"
