"""HTTP handlers of the CS API, one module per resource."""
