"""``python -m medssl.cli`` runs the ``medssl`` command line."""

from medssl.cli import main

main()
