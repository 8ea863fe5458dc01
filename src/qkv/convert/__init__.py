"""Read models that other toolkits wrote, as qkv models (the other direction of :mod:`qkv.export`).

marian      a Hugging Face ``MarianMTModel`` directory (OPUS-MT: config.json, model.safetensors,
            source.spm, target.spm, vocab.json) as a qkv :class:`~qkv.models.seq2seq.Transformer` with
            its SentencePiece tokenizers; the one Marian name table
marian_npz  a Marian release directory (the .npz, decoder.yml, *.vocab.yml, spm files), read with
            ``numpy.load(allow_pickle=False)``
native      either, written once as a qkv model directory (``qkv import``)

Nothing here ever unpickles; :func:`qkv.models.saved.load` reads both layouts directly.
"""
