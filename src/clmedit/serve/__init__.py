"""`clmedit serve`: an edited model behind the OpenAI API, its fixes added and taken back while it runs.

    store.py       the model, its editor, the live fixes and the fix file that follows them
    rwlock.py      generations read the model, fix changes write it
    generation.py  the worker that batches waiting requests into one `generate`
    schemas.py     the API's request and response shapes, and the server's bounds
    prompts.py     chat messages as a prompt (the model's chat template)
    guard.py       the API key and the body-size bound, before any route
    app.py         the routes and the error shape

Needs the `serve` extra (fastapi, uvicorn); nothing else in clmedit imports this package.
"""
