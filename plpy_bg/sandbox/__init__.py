"""The seccomp sandbox: pgseccomp's settings, filters loaded with libseccomp.

`config` parses the settings strictly (a bad name or action stops, never a
weaker filter), `engine` builds and loads filters, `preload` loads the global
filter into itself and execs postgres, `sql_api` installs session filters in
job workers and client sessions and shows what is in force.
"""
