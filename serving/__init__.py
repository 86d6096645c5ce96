"""The serving half of Picture Book: everything between HTTP and `pipeline/`, one concern per file. No torch here.

settings.py        serving knobs (PICTUREBOOK_*: port, limits, access, batching, timeouts, books, content safety)
schemas.py         the HTTP request and response (the public contract)
wire.py            the one contract between the two services: a page's job and its answer
framework.py       every patch of BentoML, uvicorn and Pillow, its shape check, and `install(settings)`
errors.py          error kinds and their HTTP statuses, one function per error answer, the OpenAPI error answers
images.py          untrusted base64 pictures in, bounded and normalised RGB (or PNG) out; pages out as PNG
guards.py          ASGI middleware: API key, admission limit, JSON-only bodies in time, no pickles
draining.py        ASGI middleware: draining on SIGTERM
readiness.py       ASGI middleware: /readyz answers fast
hangups.py         ASGI middleware: a request whose client hung up is cancelled
connections.py     idle connections closed, and at most so many open (hooked into uvicorn by framework.py)
model_client.py    the JSON client to the model service (BentoML's private client; shape checked in framework.py)
drawing.py         the front's work for one page: check, decode, send to the model, answer
books.py           whole books: the request, the job, its progress and result, the PDF of any book
book_gate.py       book submissions checked before a task exists, the running-books limit, /book/progress
pdf.py             a book as a printable PDF (reportlab)
prompt_filter.py   word and phrase lists, normalised matching; content_safety.py applies it at the edge
metrics.py         Picture Book's Prometheus metrics
listening.py       where the front listens; a warning at start when that is every interface with no API key
studio.py          the studio page's static files, mounted at /studio
bento_models.py    which weights the bento carries and how they get into the BentoML model store
"""
