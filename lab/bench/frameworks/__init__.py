"""The seeds' frameworks as reference ceilings: the showcase's hello and JSON answers, byte for
byte, in Starlette (starlette_app, on the shipped asgi_uvicorn gunicorn config) and in Sanic
(sanic_app, on Sanic's own server). Lab only: the `lab` dependency group installs both, and
no runtime code imports them.
"""
