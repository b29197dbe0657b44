"""Health evaluation on the CS (ARCHITECTURE.md §5): pure rules (rules.py: metrics, silence and
RPO at a time -> observations) and windows (windows.py: since when each condition holds -> what
to raise and clear), with a thin shell (engine.py: the database; monitor.py: the periodic
evaluator task). cs/alerts.py stores the alerts; cs/webhook.py sends them out."""
