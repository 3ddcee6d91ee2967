"""The HTTP service."""

from lifeline.api.app import create_app

__all__ = ["create_app"]
