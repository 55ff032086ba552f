"""Queue encryption: a passphrase KDF and a chunked AES-256-GCM stream format."""
