"""Write a model that another toolkit wrote (a Hugging Face Marian or a Marian release directory) once as a
native qkv model directory: config.json, model.safetensors and the tokenizers, as ``qkv train`` writes them.

Every qkv command reads the foreign directories directly; this is for users who want the model in qkv's
own layout (to keep one directory, to start several runs from it).
"""

from __future__ import annotations

import os
from pathlib import Path

from qkv import checkpoint
from qkv.models import saved

__all__ = ["import_model"]


def import_model(
    model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Read ``model_dir`` (any directory :func:`qkv.models.saved.load` reads) and write it to ``out_dir`` as a
    qkv model directory, atomically. An ``out_dir`` that is or holds the input, or that holds files qkv
    did not write, is refused before anything is read (:class:`~qkv.storage.OutputExistsError`), unless
    ``overwrite``."""
    inputs = [model_dir, saved.resolve(model_dir)]
    checkpoint.check_output(out_dir, overwrite=overwrite, inputs=inputs)
    loaded = saved.load(model_dir)
    model = loaded.model
    return checkpoint.save_directory(
        out_dir,
        tensors={checkpoint.MODEL_FILE: model.state_dict()},
        json={checkpoint.CONFIG_FILE: {"model": model.config.to_dict()}},
        text=saved.tokenizer_files(loaded.src_tokenizer, loaded.tgt_tokenizer),
        overwrite=overwrite,
        inputs=inputs,
    )
