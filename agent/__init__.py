"""jobenergy.agent."""
