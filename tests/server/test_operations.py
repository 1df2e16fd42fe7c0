"""What a DBA does to a database whose jobs run: drops that would take the job table with them."""
import psycopg
import pytest

from tests.fix_pg import launch, wait, wait_for

pytestmark = pytest.mark.server


def test_a_drop_that_could_take_the_job_table_waits_for_running_jobs(own_pg):
    own_pg.sql("CREATE DATABASE drop_ext")
    with own_pg.connect(dbname="drop_ext") as c:
        c.execute("CREATE EXTENSION plpy_bg CASCADE")
        h = launch(c, "SELECT pg_sleep(60)")
        wait_for(lambda: c.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                                   (h[0],)).fetchone()[0] == 1)
        for q in ("DROP EXTENSION plpy_bg", "DROP EXTENSION plpy_bg CASCADE", "DROP SCHEMA public CASCADE",
                  "DROP OWNED BY postgres"):
            with pytest.raises(psycopg.errors.ObjectInUse) as ei:
                c.execute(q)
            assert str(h[0]) in ei.value.diag.message_detail and "cancel" in ei.value.diag.message_hint
        assert c.execute("SELECT state FROM plpy_bg.jobs WHERE cookie = %s", (h[1],)).fetchone() == ("running",)
        c.execute("SELECT pg_background_cancel_v2(%s, %s)", h)
        wait(c, h)  # the job table is written just after: until then the drop is still refused
        wait_for(lambda: c.execute("SELECT state FROM plpy_bg.jobs WHERE cookie = %s",
                                   (h[1],)).fetchone() == ("canceled",))
        c.execute("DROP EXTENSION plpy_bg")  # the outcome is recorded: nothing runs now
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'plpy_bg'").fetchone() == (0,)


def test_a_job_may_drop_its_own_schema_and_other_databases_are_not_held(own_pg):
    own_pg.sql("CREATE DATABASE drop_other")
    with own_pg.connect() as c, own_pg.connect(dbname="drop_other") as o:
        elsewhere = launch(c, "SELECT pg_sleep(60)")  # a job of another database
        o.execute("CREATE EXTENSION plpy_bg CASCADE")
        h = launch(o, "CREATE SCHEMA job_own_s; DROP SCHEMA job_own_s")  # a job's own DROP is not refused
        assert wait(o, h)
        wait_for(lambda: o.execute("SELECT state FROM plpy_bg.jobs WHERE cookie = %s",
                                   (h[1],)).fetchone() == ("completed",))
        o.execute("DROP EXTENSION plpy_bg")
        c.execute("SELECT pg_background_cancel_v2(%s, %s)", elsewhere)
