"""jobenergy.client."""
