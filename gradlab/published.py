"""Published numbers gradlab's pages compare with (no torch: the report reads them). Each names its source."""

from __future__ import annotations

# "Dive into Deep Learning" (PyTorch port, CPU), the scratch GRU and LSTM chapter: training perplexity at epochs 40, 80,
# 120 and 160 of the book's run (hidden 256, 35 steps, batch 32, SGD lr 1e2, clipping at 1e-2, consecutive sampling).
BOOK_TRAINING_PERPLEXITY = {
    "gru": {40: 151.0, 80: 31.7, 120: 5.86, 160: 1.82},
    "lstm": {40: 211.4, 80: 67.0, 120: 15.6, 160: 4.27},
}
