"""`malmm serve`: the model behind OpenAI's chat completions API, with a video in the message.

chat.py turns a request body into what the command line would run (and results into OpenAI's
shapes), sources.py decides which videos a request may read, uploads.py keeps the videos uploaded
with POST /v1/videos, page.py serves the page at / (its files are in page/), service.py reads the
videos with the one loaded model, app.py is the FastAPI application. Only app.py, uploads.py and
page.py import FastAPI; nothing here imports torch until a video is read.
"""
