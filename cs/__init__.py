"""The configuration server: system of record, registration, settings, jobs."""
