"""jobenergy.agent.sensors."""
