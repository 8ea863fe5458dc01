"""``qkv serve``: translation over HTTP (docs/serving.md).

app             the ASGI app: routes, the body-size limit, the lifespan that starts and drains the worker
batcher         dynamic batching: one worker thread runs concurrent requests' texts in batches
inference       what the worker runs for a batch: the search, the tokens and the cross-attention
libretranslate  LibreTranslate's API (POST /translate, GET /languages, POST /detect)
v1              qkv's API (GET /v1/models, POST /v1/translate)
state           the settings (limits), and the path a translation takes: checked, queued, awaited
models          the served models: names, languages, loading
metrics         /metrics in the Prometheus text format
errors          every error as JSON with its status code
"""
