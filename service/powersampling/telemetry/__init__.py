"""Traces and metrics (OpenTelemetry)."""
