"""drlab master target: staging, replica images, undo journal, recovery-point catalog, failover."""
