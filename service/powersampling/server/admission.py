"""Admission control lives in the serving core (`powersampling.serving.admission`)."""

from powersampling.serving.admission import AdmissionControl

__all__ = ["AdmissionControl"]
