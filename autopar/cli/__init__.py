"""The ``autopar`` command line: ``autopar <subcommand> ...`` (see ``autopar.cli.main``)."""
