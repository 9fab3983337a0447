"""How `up` starts its children ("web", "workers", "dispatcher"): the environment of each.
Tests and benchmarks that start the same processes use this too, so they run them as `up`
does. Import-light on purpose: no Django settings needed."""

# A PostgreSQL connection pool is for the web server only (unless FASTFLOW_DB_POOL in the
# given env says no); the q2 cluster forks its workers and must not have one (see settings).


def child_env(part, env):
    pool = (env.get("FASTFLOW_DB_POOL") or "1") if part == "web" else "0"
    return {**env, "FASTFLOW_CHILD_PROCESS": "1", "FASTFLOW_DB_POOL": pool}
