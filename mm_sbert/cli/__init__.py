"""The ``mm-sbert`` command line: ``mm_sbert.cli.main:main`` (one module per subcommand)."""
