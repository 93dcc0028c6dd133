"""`malmm serve`: the model behind OpenAI's chat completions API, with a video in the message.

chat.py turns a request body into what the command line would run (and results into OpenAI's
shapes), sources.py decides which videos a request may read, service.py reads them with the one
loaded model, app.py is the FastAPI application. Only app.py imports FastAPI; nothing here imports
torch until a video is read.
"""
