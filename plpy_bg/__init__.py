"""plpy_bg: background SQL jobs, a seccomp sandbox and provenance checks for PostgreSQL."""
__version__ = "0.1.0"
