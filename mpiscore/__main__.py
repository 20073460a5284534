"""``python -m mpiscore`` runs the command line."""

from .cli import main

if __name__ == "__main__":  # spawned scoring processes import this module too
    main()
