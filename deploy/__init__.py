"""Deployment files (systemd units, Slurm and proxy snippets, example configs) shipped as
package data: ``jobenergy setup`` installs them from here (``importlib.resources``)."""
