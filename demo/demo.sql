-- plpy_bg demo: background SQL jobs with the pg_background 1.8 API.
\set VERBOSITY terse
\pset footer off
CREATE TABLE audit_log (at timestamptz DEFAULT clock_timestamp(), msg text);

\echo '== 1. launch a job, then read its result (the job runs in its own backend)'
SELECT * FROM pg_background_launch_v2('SELECT pg_backend_pid() AS job_backend, session_user, 6 * 7 AS answer') \gset h_
SELECT :h_pid AS pid, :h_cookie AS cookie;
SELECT * FROM pg_background_result_v2(:h_pid, :h_cookie) AS (job_backend int, who name, answer int);

\echo '== 2. autonomy: the job commits even though the launching transaction rolls back'
BEGIN;
SELECT * FROM pg_background_launch_v2($$INSERT INTO audit_log (msg) VALUES ('written by a job')$$) \gset h_
INSERT INTO audit_log (msg) VALUES ('written by the launcher');
SELECT pg_background_wait_v2(:h_pid, :h_cookie);
ROLLBACK;
SELECT msg FROM audit_log;

\echo '== 3. submit: fire and forget; VACUUM works as a job though we are in a transaction'
BEGIN;
SELECT * FROM pg_background_submit_v2('VACUUM (ANALYZE) audit_log') \gset s_
COMMIT;
SELECT pg_background_wait_v2_timeout(:s_pid, :s_cookie, 10000) AS finished_in_time;

\echo '== 4. list the jobs of this session (literals in sql_preview are hidden)'
SELECT pid, state, sql_preview, consumed
FROM pg_background_list_v2() AS (pid int4, cookie int8, launched_at timestamptz, user_id oid,
     queue_size int4, state text, sql_preview text, last_error text, consumed bool);

\echo '== 5. cancel a long job'
SELECT * FROM pg_background_launch_v2('SELECT pg_sleep(60)') \gset c_
SELECT pg_background_cancel_v2(:c_pid, :c_cookie);
SELECT state, last_error FROM pg_background_jobs WHERE cookie = :c_cookie;

\echo '== 6. an error in the job is raised in the caller with its SQLSTATE'
\set SHOW_CONTEXT never
SELECT * FROM pg_background_launch_v2('SELECT 1 / 0') \gset e_
SELECT * FROM pg_background_result_v2(:e_pid, :e_cookie) AS (x int);
\echo 'SQLSTATE of that error:' :LAST_ERROR_SQLSTATE

\echo '== 7. statistics of this session'
SELECT * FROM pg_background_stats_v2();
