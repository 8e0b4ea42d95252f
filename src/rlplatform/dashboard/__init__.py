"""The dashboard: a web page of games, models, releases, ingest and dead letters, for any profile.

It reads the bucket and the store only (``collect``), never a stage's own files, so it runs beside compose or
AWS as well as beside ``rlplatform up``; ``page`` draws what ``collect`` last read, ``server`` serves it."""
