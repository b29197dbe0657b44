"""``python -m cs.db.migrations``: make revisions (see the package docstring)."""

from cs.db.migrations import main

main()
