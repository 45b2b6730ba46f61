"""jobenergy.cli."""
