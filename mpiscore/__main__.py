"""``python -m mpiscore`` and the ``mpiscore`` command.

The first scoring process is started before anything heavy is imported (click,
MPI, h5py), so its interpreter start and onnxruntime import overlap the rank's
own start-up: the job's critical path is then the slower of the two, not their sum.
"""

import sys

from .pool import ScorerProcess


def main() -> None:
    """Start a scoring process for ``score``, then run the command line with it."""
    early = [ScorerProcess()] if sys.argv[1:2] == ["score"] else []
    from .cli import main as cli

    cli(obj=early)


if __name__ == "__main__":
    main()
