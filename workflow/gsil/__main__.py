from gsil.cli import main

raise SystemExit(main())
