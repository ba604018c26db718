"""Development helpers: servers and tools for testing Digest, never used in production."""
