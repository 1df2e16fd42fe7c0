"""Provenance and policy: why a job runs, what its SQL does, and whether to allow it.

The launch path calls three functions:

    prov = capture_provenance(plpy, parent_job=None)  # in the launching backend
    cls = check(plpy, sql, prov, job_role)            # raises 42501 when refused
    text = preview(sql)                               # literal-free sql_preview

`provenance` walks the backend's call stack, `classify` reads the SQL with
pglast, `trust` says who trusts whom, `decision` applies the rules and words
the refusal, and `sql_api` holds the bodies of the SQL functions.
"""
from plpy_bg.policy.classify import classify, commits_its_outcome, row_statement
from plpy_bg.policy.decision import check
from plpy_bg.policy.preview import preview
from plpy_bg.policy.provenance import capture_provenance

__all__ = ["capture_provenance", "check", "classify", "preview", "row_statement", "commits_its_outcome"]
