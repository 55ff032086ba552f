"""Streaming compression for the queue (``queue compression``)."""
