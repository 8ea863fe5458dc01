"""Read models that other toolkits wrote, as qkv models (the other direction of :mod:`qkv.export`).

marian  a Hugging Face ``MarianMTModel`` directory (OPUS-MT: config.json, model.safetensors,
        source.spm, target.spm, vocab.json) as a qkv :class:`~qkv.models.seq2seq.Transformer` with
        its SentencePiece tokenizers; never unpickling anything
"""
