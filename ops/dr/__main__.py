"""``python -m ops.dr <subcommand>``: see ``ops.dr.cli``."""

from ops.dr.cli import main

raise SystemExit(main())
