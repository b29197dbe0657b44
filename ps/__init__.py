"""Process server: ingest from agents, durable cache, upload to the MT."""
