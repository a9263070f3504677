"""The top layer: the ``facelift`` command line, the offline demo and the local stack helpers."""
