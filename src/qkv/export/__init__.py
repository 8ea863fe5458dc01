"""Export a qkv translation model to the layouts other toolkits read.

marian       a Hugging Face ``MarianMTModel`` directory (config.json, model.safetensors in Hugging Face's
             names, generation_config.json, tokenizer files): ``MarianMTModel.from_pretrained`` loads it
ctranslate2  a CTranslate2 model directory (model.bin, config.json, vocabularies), built through
             CTranslate2's own specification API (needs the ``ctranslate2`` package)

Both give the same outputs as qkv on the same inputs (tested); ``qkv export`` runs them.
"""
