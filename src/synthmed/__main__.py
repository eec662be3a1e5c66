"""`python -m synthmed ...` (also what `torchrun -m synthmed` runs)."""

from synthmed.cli import main

raise SystemExit(main())
