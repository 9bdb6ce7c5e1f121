"""The ``sapindex`` command line: one module per verb, wired together in :mod:`sapindex.cli.main`."""
