"""The Slurm hooks and the SPANK plugin source, shipped as package data: ``jobenergy setup
slurm-hooks`` installs the hooks and builds the plugin from here (``importlib.resources``)."""
