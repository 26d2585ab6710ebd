from amqpy.cli import main

raise SystemExit(main())
