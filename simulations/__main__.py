"""`python -m simulations ...`: see simulations.cli."""

from simulations.cli import main

raise SystemExit(main())
