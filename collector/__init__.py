"""jobenergy.collector."""
