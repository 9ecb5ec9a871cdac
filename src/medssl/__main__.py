"""``python -m medssl`` runs the ``medssl`` command line."""

from medssl.cli import main

main()
