"""Drills: whole scenarios run against the process lab, printing each step with what it verified
and how long it took (`drlab drill failback | site-loss | failover | ps-switch`)."""
