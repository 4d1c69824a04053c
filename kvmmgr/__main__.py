from kvmmgr.cli import main

raise SystemExit(main())
