"""Units, wire schema and energy arithmetic shared by the agent and the collector.

Depends on pydantic only: the node agent imports this, so nothing here may pull in a
database or web framework.
"""
