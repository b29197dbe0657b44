"""Lab runner, demo and drills, and the `drlab` command."""
