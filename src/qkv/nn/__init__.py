"""The parts of the Transformer, each testable alone.

masks        padding and causal masks (bool, True = may attend)
attention    scaled dot-product attention and MultiHeadAttention  <- the attention code is here
cache        the key/value cache for incremental decoding
dropout      dropout with a fast CPU mask (same semantics as nn.Dropout)
positional   sinusoidal and learned positional encodings
embedding    token embeddings scaled by sqrt(d_model)
feedforward  the position-wise feed-forward network
layers       EncoderLayer and DecoderLayer (Add & Norm, post-LN or pre-LN)
modes        eval_mode(model): dropout off for a block, without walking the model when already off
"""

from qkv.nn import masks
from qkv.nn.attention import MultiHeadAttention, attend
from qkv.nn.cache import KVCache, LayerCache
from qkv.nn.dropout import Dropout
from qkv.nn.embedding import TokenEmbedding
from qkv.nn.feedforward import FeedForward
from qkv.nn.layers import DecoderLayer, EncoderLayer
from qkv.nn.positional import LearnedPositions, SinusoidalPositions, sinusoidal_table

__all__ = [
    "DecoderLayer",
    "Dropout",
    "EncoderLayer",
    "FeedForward",
    "KVCache",
    "LayerCache",
    "LearnedPositions",
    "MultiHeadAttention",
    "SinusoidalPositions",
    "TokenEmbedding",
    "attend",
    "masks",
    "sinusoidal_table",
]
