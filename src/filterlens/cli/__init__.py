"""The ``filterlens`` command line."""
