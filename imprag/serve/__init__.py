"""`imprag serve`: an OpenAI-compatible HTTP API over one ImpRAG model and its index.

config.py     ServeConfig (limits, batching, prompt rule)      schemas.py   request bodies, error shape
prompting.py  chat messages -> prompt                          guards.py    API key, body size limit
batching.py   the request queue and the model worker thread    app.py       routes (FastAPI)
server.py     uvicorn in the foreground or a background thread
"""
