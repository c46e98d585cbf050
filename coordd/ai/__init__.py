"""AI providers and analyses (queried on demand, off the hot path)."""
