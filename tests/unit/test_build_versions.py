"""The version list and the install script's shape (pgai's recipe), without a server."""
import re

import build
import plpy_bg


def test_one_version_list_names_the_package_control_file_and_scripts():
    assert plpy_bg.__version__ == build.VERSION == build.VERSIONS[-1]
    assert f"default_version = '{build.VERSION}'" in build.control()
    assert set(build.RELEASED) == set(build.VERSIONS[:-1])  # every earlier version is released
    assert all(re.fullmatch(r"[0-9a-f]{40}", c) for c in build.RELEASED.values())
    assert build.upgrade_scripts() == [f"plpy_bg--{v}--{build.VERSION}.sql" for v in build.VERSIONS[:-1]]


def test_released_incremental_files_are_frozen():
    assert build.frozen_changes() == []
    released = {n for n, (v, _) in build.FROZEN.items() if v in build.RELEASED}
    assert released == set(build.FROZEN)  # a file is frozen when its version is released, not before


def test_each_incremental_file_runs_once_and_idempotent_files_every_time():
    script = build.build_sql()
    for f in build.incremental_files():
        assert script.count(f"INTO _done USING '{f.name}'") == 1, f.name  # guarded
        assert f"VALUES ('{f.name}', '{build.VERSION}', _body)" in script  # recorded when applied
    for f in build.idempotent_files():
        assert f"-- sql/idempotent/{f.name}" in script
    # an install of 0.1.0, which has no migration table, is recorded as having applied 0.1.0's files
    seed = script[script.index("DO $seed$"):script.index("$seed$;")]
    assert all(f"VALUES ('{n}', '0.1.0'" in seed for n, (v, _) in build.FROZEN.items() if v == "0.1.0")
    assert script.index("DO $seed$") < script.index("-- sql/incremental/")
