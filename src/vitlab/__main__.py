"""``python -m vitlab`` runs the ``vitlab`` command."""

from vitlab.cli.main import main

raise SystemExit(main())
