"""jobenergy.sim."""
