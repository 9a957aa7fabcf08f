"""`python -m schemas [DIR]`: regenerate the committed JSON Schema files."""

from schemas.export import main

raise SystemExit(main())
