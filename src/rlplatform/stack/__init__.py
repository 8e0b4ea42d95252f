"""The embedded stack (``rlplatform up``): every stage as a supervised local process, its progress and view."""
