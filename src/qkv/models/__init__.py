"""Models built from qkv.nn: the encoder-decoder Transformer, the non-autoregressive one, BERT."""
