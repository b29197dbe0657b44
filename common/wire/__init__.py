"""Wire and disk formats: one module per format (batch, seal, journal)."""
