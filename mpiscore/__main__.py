"""``python -m mpiscore`` runs the command line."""

from .cli import main

main()
