"""Command-line entry points: ``jobenergy`` (operators) and ``senergy`` (users)."""
