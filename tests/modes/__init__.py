"""CNI modes that exist only in the tests, to prove ``overlaynet.datapath.modes`` is open to a new mode."""
