"""``python -m overlaynet``: the same CLI as the ``overlaynet`` command."""

from overlaynet.cli import entry

entry()
