"""The local stack (``make stack``): its processes (:mod:`.procs`), credentials (:mod:`.auth`), optional
PostgreSQL (:mod:`.postgres`), what each service runs with (:mod:`.state`) and the stack itself (:mod:`.local`).
``facelift.cli.localstack`` is the command line over it."""
