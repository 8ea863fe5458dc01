"""A saved translation model: a directory with config.json, model.safetensors and its tokenizers.

``qkv train`` writes a run directory; every checkpoint in it (``checkpoints/step-N/``) and the best model
(``best/``) is such a model directory. :func:`resolve` accepts either and picks the model to use.
:func:`load` also reads a Hugging Face Marian directory (OPUS-MT) and a Marian release directory (.npz) as
they are (:mod:`qkv.convert`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from qkv import checkpoint
from qkv.config import NATConfig, model_config_from_dict
from qkv.convert import marian, marian_npz
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Transformer
from qkv.tokenize import Tokenizer
from qkv.tokenize_spm import load_tokenizer

JOINT_TOKENIZER = "tokenizer.json"
SRC_TOKENIZER = "src_tokenizer.json"
TGT_TOKENIZER = "tgt_tokenizer.json"


@dataclass
class SavedModel:
    """A loaded translation model: autoregressive (``model_type`` qkv-seq2seq in config.json) or not
    (qkv-nat)."""

    model: Transformer | NATransformer
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    path: Path

    @property
    def seq2seq(self) -> Transformer:
        """The model, for code that needs the autoregressive Transformer; a NAT model is an error."""
        if not isinstance(self.model, Transformer):
            raise checkpoint.CheckpointError(
                f"{self.path}: is a non-autoregressive model (model_type qkv-nat); this needs an "
                "autoregressive one (qkv-seq2seq)"
            )
        return self.model


def _is_foreign(directory: Path) -> bool:
    """A Hugging Face Marian directory or a Marian release directory (read by :mod:`qkv.convert`)."""
    return marian.is_marian_directory(directory) or (
        not (directory / checkpoint.CONFIG_FILE).is_file() and marian_npz.is_release_directory(directory)
    )


def resolve(path: str | os.PathLike[str]) -> Path:
    """The model directory to load from a model directory or a run directory (``best/``, else the latest
    checkpoint). A ``best/`` left missing by a writer killed while replacing it is restored first."""
    p = Path(path)
    if (p / checkpoint.MODEL_FILE).is_file() or not p.is_dir() or _is_foreign(p):
        return p
    best = checkpoint.recover(p / "best")
    if (best / checkpoint.MODEL_FILE).is_file():
        return best
    latest = checkpoint.latest_checkpoint(p)
    if latest is not None:
        return latest
    return p  # load_directory will say what is missing


def tokenizer_files(src: Tokenizer, tgt: Tokenizer) -> dict[str, str]:
    """The tokenizer files of a model directory: one joint file, or one per side."""
    if src is tgt:
        return {JOINT_TOKENIZER: src.to_json()}
    return {SRC_TOKENIZER: src.to_json(), TGT_TOKENIZER: tgt.to_json()}


def load(path: str | os.PathLike[str], *, device: str = "cpu") -> SavedModel:
    """Load a model directory (or a run directory's best/latest model, or a Hugging Face Marian directory)
    for inference, in eval mode."""
    directory = resolve(path)
    if _is_foreign(directory):
        load_foreign = (
            marian.load_marian if marian.is_marian_directory(directory) else marian_npz.load_release
        )
        imported, src_spm, tgt_spm = load_foreign(directory)
        return SavedModel(imported.to(device), src_spm, tgt_spm, directory)
    config, tensors = checkpoint.load_directory(directory)
    model_config = model_config_from_dict(
        config.get("model", config), source=str(directory / checkpoint.CONFIG_FILE)
    )
    model_class = NATransformer if isinstance(model_config, NATConfig) else Transformer
    # Shapes are compared on a model without storage (the meta device) before anything is allocated: a
    # config whose sizes disagree with its weights is an error, never a huge allocation.
    with torch.device("meta"):
        skeleton = model_class(model_config)  # type: ignore[arg-type]
    checkpoint.check_state_dict(skeleton.state_dict(), tensors, directory / checkpoint.MODEL_FILE)
    if (directory / JOINT_TOKENIZER).is_file():
        src = tgt = load_tokenizer(directory / JOINT_TOKENIZER)
    elif (directory / SRC_TOKENIZER).is_file() and (directory / TGT_TOKENIZER).is_file():
        src, tgt = load_tokenizer(directory / SRC_TOKENIZER), load_tokenizer(directory / TGT_TOKENIZER)
    else:
        raise checkpoint.CheckpointError(
            f"{directory}: has no {JOINT_TOKENIZER} (or {SRC_TOKENIZER} + {TGT_TOKENIZER}); "
            "a translation model directory needs its tokenizers"
        )
    for name, tok, size in (
        ("source", src, model_config.src_vocab_size),
        ("target", tgt, model_config.tgt_vocab_size),
    ):
        if tok.vocab_size != size:
            raise checkpoint.CheckpointError(
                f"{directory}: the {name} tokenizer has {tok.vocab_size} tokens but the model expects {size}"
            )
    model = model_class(model_config)  # type: ignore[arg-type]
    model.load_state_dict(tensors)
    model.to(device).eval()
    return SavedModel(model, src, tgt, directory)
