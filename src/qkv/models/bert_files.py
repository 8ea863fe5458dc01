"""Hugging Face BERT directories on disk: config.json, safetensors weights (one file or shards), never a
pickle.

Everything here reads or writes files; :mod:`qkv.models.bert_hf` maps the tensors onto the model. Config keys
are translated by the one table :data:`HF_CONFIG_KEYS`. Every file is checked before it is used, and a
problem is one :class:`~qkv.storage.CheckpointError` (or :class:`~qkv.config.ConfigError` for config
values) naming the file and, where one is to blame, the tensor or key:

* ``config.json`` and ``modules.json``: not UTF-8, not JSON, or JSON of the wrong shape;
* ``model.safetensors``: its header is validated against the file's size (:mod:`qkv.storage`), so a
  truncated copy names the first tensor cut off, and a corrupted header is refused before any tensor is read;
* ``pytorch_model.bin`` and other pickles: refused by name, never opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from qkv import storage
from qkv.config import BertConfig, ConfigError
from qkv.storage import CheckpointError

__all__ = [
    "HF_CONFIG_KEYS",
    "WEIGHTS_FILE",
    "WEIGHTS_INDEX_FILE",
    "CheckpointError",
    "TensorInfo",
    "TensorReader",
    "config_from_hf",
    "config_to_hf",
    "read_hf_config",
    "read_json_file",
    "transformer_dir",
    "weight_files",
    "write_pretrained",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# Files that hold pickles (or formats we do not read): named in the refusal, never opened.
_REFUSED_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
_REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# Hugging Face config.json key -> BertConfig field.
HF_CONFIG_KEYS: tuple[tuple[str, str], ...] = (
    ("vocab_size", "vocab_size"),
    ("hidden_size", "d_model"),
    ("num_attention_heads", "heads"),
    ("intermediate_size", "d_ff"),
    ("num_hidden_layers", "layers"),
    ("max_position_embeddings", "max_positions"),
    ("type_vocab_size", "type_vocab_size"),
    ("hidden_act", "activation"),
    ("hidden_dropout_prob", "dropout"),
    ("attention_probs_dropout_prob", "attention_dropout"),
    ("layer_norm_eps", "layer_norm_eps"),
    ("pad_token_id", "pad_id"),
    ("initializer_range", "init_std"),
)


# ---- JSON files ------------------------------------------------------------------------------------------


def read_json_file(path: Path, expect: type[dict[str, Any]] | type[list[Any]] = dict) -> Any:
    """A JSON object (or, with ``expect=list``, an array) from ``path``; a :class:`CheckpointError` naming
    the file for anything else."""
    value = storage.read_json(path, what="a JSON file")
    if not isinstance(value, expect):
        wanted = "object {...}" if expect is dict else "array [...]"
        raise CheckpointError(f"{path}: expected a JSON {wanted}, got {storage.json_type(value)}")
    return value


# ---- config.json ----------------------------------------------------------------------------------------


def config_from_hf(data: Mapping[str, Any], *, source: str = "config.json") -> BertConfig:
    """A :class:`BertConfig` from a Hugging Face BERT ``config.json`` dict.

    Missing keys take Hugging Face's defaults (which are BERT-base's, as are ours). Architectures that differ
    from BERT in computation (another model_type, relative positions, a decoder, an approximate GELU) are
    refused with a message naming the key, rather than loaded and silently computed differently. A value of
    the wrong type is a :class:`ConfigError` naming the key.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a JSON object of config keys, got {type(data).__name__}")
    model_type = data.get("model_type", "bert")
    if model_type != "bert":
        raise ConfigError(
            f"{source}: model_type={model_type!r}; qkv loads BERT-architecture checkpoints "
            f"(model_type 'bert', as BERT, MiniLM and many sentence-transformers models are)"
        )
    for key, allowed in (("position_embedding_type", "absolute"), ("is_decoder", False)):
        if key in data and data[key] != allowed:
            raise ConfigError(f"{source}: {key}={data[key]!r} is not supported; qkv's BERT needs {allowed!r}")
    if data.get("add_cross_attention"):
        raise ConfigError(f"{source}: add_cross_attention=true is not supported (BERT as a decoder)")
    values: dict[str, Any] = {}
    for hf_key, ours in HF_CONFIG_KEYS:
        if hf_key in data and data[hf_key] is not None:
            values[ours] = data[hf_key]
    if values.get("activation", "gelu") not in ("gelu", "relu"):
        raise ConfigError(
            f"{source}: hidden_act={values['activation']!r} is not supported; qkv's BERT has 'gelu' "
            f"(exact, erf-based, as Hugging Face's 'gelu') and 'relu'"
        )
    try:
        return BertConfig(**values)
    except ConfigError as error:
        message = str(error)
        for hf_key, ours in HF_CONFIG_KEYS:
            if message.startswith(f"{ours}=") and hf_key != ours:
                message += f" (config.json key {hf_key})"
                break
        raise ConfigError(f"{source}: {message}") from error


def config_to_hf(
    config: BertConfig, architecture: str = "BertModel", num_labels: int | None = None
) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of ``config`` (with ``id2label`` when there are labels)."""
    data: dict[str, Any] = {"architectures": [architecture], "model_type": "bert"}
    for hf_key, ours in HF_CONFIG_KEYS:
        data[hf_key] = getattr(config, ours)
    data["position_embedding_type"] = "absolute"
    if num_labels is not None:
        data["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        data["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    return data


def read_hf_config(model_dir: Path) -> tuple[dict[str, Any], BertConfig]:
    """``config.json`` of a BERT directory: the raw dict and the :class:`BertConfig` it describes."""
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: not found; a Hugging Face BERT directory has a config.json")
    data: dict[str, Any] = read_json_file(config_path)
    return data, config_from_hf(data, source=str(config_path))


def num_labels_of(data: Mapping[str, Any], source: Path) -> int | None:
    """The number of classes config.json's ``id2label`` declares, or None if it declares none."""
    labels = data.get("id2label")
    if labels is None:
        return None
    if not isinstance(labels, (dict, list)):
        raise ConfigError(f"{source}: id2label must be an object of labels, got {storage.json_type(labels)}")
    return len(labels) or None


def classifier_dropout_of(data: Mapping[str, Any], source: Path) -> float | None:
    """config.json's ``classifier_dropout``, checked: None or a probability."""
    value = data.get("classifier_dropout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{source}: classifier_dropout={value!r} must be null or in [0, 1)")
    return float(value)


# ---- finding the weights ----------------------------------------------------------------------------------


def transformer_dir(path: str | os.PathLike[str]) -> Path:
    """The directory holding the BERT ``config.json`` and weights.

    That is ``path`` itself, except in an older sentence-transformers folder whose ``modules.json`` puts the
    Transformer module in a subdirectory (``0_Transformer/``).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory; --model expects a Hugging Face BERT directory")
    modules_file = root / "modules.json"
    if modules_file.is_file():
        for module in read_modules(modules_file):
            if str(module.get("type", "")).endswith("models.Transformer"):
                return root / str(module.get("path", ""))
    return root


def read_modules(modules_file: Path) -> list[dict[str, Any]]:
    """sentence-transformers' ``modules.json``: an array of objects, each with a ``type`` string."""
    modules: list[Any] = read_json_file(modules_file, list)
    for index, module in enumerate(modules):
        if not isinstance(module, dict) or not isinstance(module.get("type"), str):
            raise CheckpointError(f'{modules_file}: entry {index} is not an object with a "type" string')
        if not isinstance(module.get("path", ""), str):
            raise CheckpointError(f'{modules_file}: entry {index} has a "path" that is not a string')
    return modules


@dataclass(frozen=True)
class TensorInfo:
    """Where a checkpoint tensor lies (its file) and its shape, read from the file's header."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


def _header(path: Path) -> dict[str, TensorInfo]:
    return {
        name: TensorInfo(path, e.shape, e.dtype) for name, e in storage.read_safetensors_header(path).items()
    }


def weight_files(model_dir: Path) -> dict[str, TensorInfo]:
    """Every tensor in the directory's safetensors weights (one file or an index of shards), every header
    validated.

    Refuses a directory that has only pickle weights: unpickling runs whatever code the file contains.
    """
    single = model_dir / WEIGHTS_FILE
    index = model_dir / WEIGHTS_INDEX_FILE
    if single.is_file():
        return _header(single)
    if index.is_file():
        return _sharded(model_dir, index)
    refused = sorted(
        p.name for p in model_dir.iterdir() if p.name in _REFUSED_FILES or p.suffix in _REFUSED_SUFFIXES
    )
    if refused:
        raise CheckpointError(
            f"{model_dir}: has no {WEIGHTS_FILE}, only {', '.join(refused)}. qkv loads safetensors only and "
            f"never unpickles a checkpoint (a pickle can run arbitrary code). Convert it once, where you "
            f"trust the file, e.g. with transformers: BertModel.from_pretrained(DIR).save_pretrained(DIR) "
            f"(writes {WEIGHTS_FILE})"
        )
    raise CheckpointError(
        f"{model_dir}: no {WEIGHTS_FILE}; expected a Hugging Face BERT directory (config.json + {WEIGHTS_FILE})"
    )


def _sharded(model_dir: Path, index: Path) -> dict[str, TensorInfo]:
    weight_map = read_json_file(index).get("weight_map", {})
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f'{index}: "weight_map" must map tensor names to shard file names')
    infos: dict[str, TensorInfo] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = model_dir / shard
        if Path(shard).name != shard or not shard_path.is_file():
            raise CheckpointError(f"{index}: lists shard {shard!r}, which is not a file in {model_dir}")
        infos.update(_header(shard_path))
    absent = sorted(set(weight_map) - set(infos))
    if absent:
        raise CheckpointError(f"{index}: tensor {absent[0]!r} is not in its shard {weight_map[absent[0]]}")
    return infos


class TensorReader:
    """Reads tensors by name from the files :func:`weight_files` found, opening each file once."""

    def __init__(self, infos: Mapping[str, TensorInfo]) -> None:
        self.infos = infos
        self.handles: dict[Path, Any] = {}

    def __call__(self, name: str) -> Tensor:
        file = self.infos[name].file
        try:
            if file not in self.handles:
                self.handles[file] = safe_open(str(file), framework="pt")
            return self.handles[file].get_tensor(name)  # type: ignore[no-any-return]
        except Exception as error:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{file}: cannot read tensor {name!r} ({error})") from error


# ---- writing ---------------------------------------------------------------------------------------------------


def write_pretrained(out: Path, config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``out``, each atomically (mode 0644).

    Other files in ``out`` (tokenizer files copied alongside) are kept. The safetensors header carries
    ``format: pt``, which transformers requires.
    """
    weights = save(dict(tensors), metadata={"format": "pt"})
    text = json.dumps(config, indent=2) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    storage.write_file(out / WEIGHTS_FILE, weights)
    storage.write_file(out / CONFIG_FILE, text)
    return out
