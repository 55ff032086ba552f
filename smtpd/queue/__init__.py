"""The queue: envelopes, message ids, the spool front and its blob backends.

Layering (DESIGN.md §4): ``front.QueueFront`` serializes, compresses and
encrypts; a backend (``backend.QueueBackend``) only stores opaque blobs by id.
"""
