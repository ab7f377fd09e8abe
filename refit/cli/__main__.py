"""``python -m refit.cli``: the same command as the ``refit`` script."""

from refit.cli import main

main()
