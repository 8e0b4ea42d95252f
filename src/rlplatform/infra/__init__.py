"""Plumbing every stage shares: AWS clients and the moto emulator, child processes, bootstrap of the stream
and bucket."""
