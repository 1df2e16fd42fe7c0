"""plpy_bg: background SQL jobs, a seccomp sandbox and provenance checks for PostgreSQL."""
__version__ = "0.2.0"  # written from build.py VERSIONS (a unit test holds them equal)
