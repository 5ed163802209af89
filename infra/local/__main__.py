"""`python -m infra.local --home DIR`: run the local Google Cloud in the foreground."""

from infra.local.server import main

raise SystemExit(main())
