"""Files on disk: written so that nothing is lost, read so that nothing harmful or malformed gets in.

Every file qkv reads or writes goes through here, one idea per module:

errors        :class:`CheckpointError` (a file qkv cannot or will not load or write), its subclass
              :class:`OutputExistsError` (an output that holds what qkv did not write, or that is an input),
              and :class:`WriteError` (an ``OSError`` such as a full disk, naming the target)
json_files    :func:`read_json` and :func:`read_json_object`: the file (and line and column) named for bytes
              that are not UTF-8, text that is not JSON, JSON nested too deep or of the wrong shape
safetensors   :func:`read_safetensors_header`: a header validated against the file's size before any tensor
              is read; a pickle recognised (:func:`pickle_kind`), never unpickled
outputs       :func:`check_output_directory` and :func:`check_output_file`: outputs never destroy data
atomic        :func:`write_file`, :func:`write_directory` and :func:`replace_directory`: a temporary sibling,
              fsynced and renamed into place; :func:`recover_directory` and :func:`clean_leftovers` for
              what a killed writer leaves behind

The package imports nothing of qkv but its own modules; everything is re-exported here.
"""

from __future__ import annotations

from qkv.storage.atomic import (
    DIR_MODE,
    FILE_MODE,
    LEFTOVER,
    Stage,
    clean_leftovers,
    fsync_dir,
    recover_directory,
    remove,
    replace_directory,
    sibling,
    write_directory,
    write_file,
    write_new_file,
    writer_alive,
)
from qkv.storage.errors import CheckpointError, OutputExistsError, WriteError
from qkv.storage.json_files import json_type, parse_json, read_json, read_json_object
from qkv.storage.outputs import check_output_directory, check_output_file
from qkv.storage.safetensors import (
    MAX_HEADER_BYTES,
    PICKLE_SUFFIXES,
    SAFETENSORS_DTYPES,
    TensorEntry,
    convert_hint,
    pickle_kind,
    read_safetensors_header,
)

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "LEFTOVER",
    "MAX_HEADER_BYTES",
    "PICKLE_SUFFIXES",
    "SAFETENSORS_DTYPES",
    "CheckpointError",
    "OutputExistsError",
    "Stage",
    "TensorEntry",
    "WriteError",
    "check_output_directory",
    "check_output_file",
    "clean_leftovers",
    "convert_hint",
    "fsync_dir",
    "json_type",
    "parse_json",
    "pickle_kind",
    "read_json",
    "read_json_object",
    "read_safetensors_header",
    "recover_directory",
    "remove",
    "replace_directory",
    "sibling",
    "write_directory",
    "write_file",
    "write_new_file",
    "writer_alive",
]
