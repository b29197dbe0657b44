"""The CS's SQL store: models, engine setup and small repository modules."""
