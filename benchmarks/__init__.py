"""qkv's benchmark suite: side-by-side speed tables against torch.nn.Transformer, Hugging Face and CTranslate2.

    python -m benchmarks                          # every section (make bench)
    python -m benchmarks --only train,decode      # some sections
    python -m benchmarks --quick                  # tiny sizes, a few iterations (the smoke test)
    python -m benchmarks.decode_scaling           # decoding time vs output length, with and without the cache

Sections: ``peak`` (the machine's matmul rate), ``train`` (:mod:`benchmarks.train`), ``decode``
(:mod:`benchmarks.decode`), ``bert`` (:mod:`benchmarks.bert`). The baselines are the ``bench`` extra:
``pip install -e ".[bench]"``.
"""
