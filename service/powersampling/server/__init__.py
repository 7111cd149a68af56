"""The gRPC server: `serve(config)` runs powersampling.v1.ReasoningService (see app.py)."""

from powersampling.server.app import RunningServer, serve

__all__ = ["RunningServer", "serve"]
