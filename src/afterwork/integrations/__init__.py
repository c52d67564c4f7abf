"""Web framework integrations: ASGI (Starlette, FastAPI, Litestar, plain ASGI), Flask, Django."""
