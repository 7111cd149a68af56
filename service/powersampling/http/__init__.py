"""The OpenAI-compatible HTTP API over the serving core (see api_server.py and docs/http.md)."""
