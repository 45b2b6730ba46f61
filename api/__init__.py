"""jobenergy.api."""
