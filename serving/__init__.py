"""The serving half of Picture Book: everything between HTTP and `pipeline/`, one concern per file. No torch here.

settings.py      serving knobs (PICTUREBOOK_*: port, limits, API key, CORS, batching, timeouts)
schemas.py       the HTTP request and response, and the page as the front hands it to the model service
errors.py        error kinds and their HTTP statuses, field-named 400s
images.py        untrusted base64 pictures in, normalised RGB out; pages out as PNG
guards.py        ASGI middleware: API key, admission limit, JSON-only bodies, no pickles
model_client.py  the JSON client to the model service (the one place that uses BentoML's private API)
drawing.py       the front's work for one page: check, decode, send to the model, answer
bento_models.py  which weights the bento carries and how they get into the BentoML model store
"""
