from stentor.cli import main

raise SystemExit(main())
