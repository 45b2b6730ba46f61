"""``python -m jobenergy.agent``: the node agent (:mod:`jobenergy.agent.main`)."""

from jobenergy.agent.main import main

main()
