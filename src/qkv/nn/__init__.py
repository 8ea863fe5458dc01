"""The parts of the Transformer, each testable alone.

masks        padding and causal masks (bool, True = may attend)
attention    scaled dot-product attention; the self- and cross-attention sublayers; MultiHeadAttention
             <- the attention code is here
cache        the key/value cache for incremental decoding
dropout      dropout with a fast CPU mask (same semantics as nn.Dropout)
positional   sinusoidal and learned positional encodings
embedding    token embeddings scaled by sqrt(d_model)
feedforward  the position-wise feed-forward network
layers       Add & Norm and the encoder and decoder layers, written once over LayerOps; EncoderLayer and
             DecoderLayer (post-LN or pre-LN) hold their parameters
modes        eval_mode(model): dropout off for a block, without walking the model when already off
"""

from qkv.nn import masks
from qkv.nn.attention import KeyMask, MultiHeadAttention, attend
from qkv.nn.cache import KVCache, LayerCache
from qkv.nn.dropout import Dropout
from qkv.nn.embedding import TokenEmbedding
from qkv.nn.feedforward import FeedForward
from qkv.nn.layers import DecoderLayer, EncoderLayer, LayerOps
from qkv.nn.positional import LearnedPositions, SinusoidalPositions, sinusoidal_table

__all__ = [
    "DecoderLayer",
    "Dropout",
    "EncoderLayer",
    "FeedForward",
    "KVCache",
    "KeyMask",
    "LayerCache",
    "LayerOps",
    "LearnedPositions",
    "MultiHeadAttention",
    "SinusoidalPositions",
    "TokenEmbedding",
    "attend",
    "masks",
    "sinusoidal_table",
]
