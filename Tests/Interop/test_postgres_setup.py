"""`serve --database-url`: a PostgreSQL the broker cannot use is a clear error and a non-zero exit at start-up,
never a crash or a hang; brokers starting at once on a new database migrate it once. Needs the throw-away
cluster scripts/test starts (CHAT_TEST_DATABASE_URL); skipped without it."""
import os
import shlex
import subprocess
import tempfile
import time
import urllib.parse
import uuid

import pytest
import requests

from conftest import AGAINST_PEER, SECRET, SERVER_CMD, free_port

DATABASE_URL = os.environ.get("CHAT_TEST_DATABASE_URL", "")
pytestmark = [
    pytest.mark.skipif(AGAINST_PEER, reason="exercises the chat-broker executable itself"),
    pytest.mark.skipif(not DATABASE_URL, reason="CHAT_TEST_DATABASE_URL is not set: no PostgreSQL to test against"),
]


def binary():
    return shlex.split(SERVER_CMD)[0]


def with_path(url, database=None, password=None, port=None):
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    user_info, host = netloc.rsplit("@", 1)
    user = user_info.split(":", 1)[0]
    if password is not None:
        user_info = f"{user}:{password}"
    if port is not None:
        host = f"{host.rsplit(':', 1)[0]}:{port}"
    path = f"/{database}" if database else parts.path
    return urllib.parse.urlunsplit((parts.scheme, f"{user_info}@{host}", path, parts.query, ""))


def psql(sql, url=DATABASE_URL):
    out = subprocess.run(["psql", url.split("?")[0], "-v", "ON_ERROR_STOP=1", "-Atc", sql], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def fresh_database():
    name = "t_" + uuid.uuid4().hex[:12]
    psql(f"CREATE DATABASE {name}")
    yield with_path(DATABASE_URL, database=name)
    psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def serve(url, port=None, timeout=30):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["CHAT_JWT_SECRET"] = SECRET
    args = [binary(), "serve", "--host", "127.0.0.1", "--port", str(port or free_port()), "--data-dir", tempfile.mkdtemp(),
            "--database-url", url]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def refused(url):
    """Starts a broker on `url` and returns its exit code and output; it must stop by itself within 20 s."""
    proc = serve(url)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the broker kept running (or hung) on a database it cannot use")
    return proc.returncode, out + err


@pytest.mark.parametrize("case", ["wrong password", "nothing listening", "unknown database", "newer schema"])
def test_a_database_it_cannot_use_is_a_clear_error(case, fresh_database):
    if case == "wrong password":
        url, says = with_path(DATABASE_URL, password="not-the-password"), "password authentication failed"
    elif case == "nothing listening":
        url, says = with_path(DATABASE_URL, port=free_port()), "refused"
    elif case == "unknown database":
        url, says = with_path(DATABASE_URL, database="no_such_db_" + uuid.uuid4().hex[:8]), "does not exist"
    else:
        psql("CREATE SCHEMA chat; CREATE TABLE chat.schema_version(version integer NOT NULL); INSERT INTO chat.schema_version VALUES (99)",
             fresh_database)
        url, says = fresh_database, "newer than this broker"
    code, output = refused(url)
    # The contract: a bad value, an unreachable database too, is a usage error (64), named.
    assert code == 64, (code, output)
    assert says in output and "--database-url" in output, output
    assert "not-the-password" not in output, "the password must never be printed"


def test_a_malformed_url_is_a_usage_error():
    proc = serve("mysql://someone@somewhere/db")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 64, (proc.returncode, out + err)
    assert "--database-url" in out + err


def wait_healthy(port, proc):
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "a broker did not come up"
        time.sleep(0.1)


def stop(procs):
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_three_brokers_starting_at_once_migrate_a_new_database_once(fresh_database):
    ports = [free_port() for _ in range(3)]
    procs = [serve(fresh_database, port) for port in ports]
    try:
        for port, proc in zip(ports, procs):
            wait_healthy(port, proc)
        versions = [int(v) for v in psql("SELECT version FROM chat.schema_version ORDER BY version", fresh_database).split()]
        assert versions == sorted(set(versions)) and versions, versions   # each migration once
        assert psql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'chat'", fresh_database) == "11"
    finally:
        stop(procs)


def test_schema_10_stores_a_tempid_once_and_keeps_duplicates_stored_before(fresh_database):
    """Version 10 makes (thread, tempId, sender) unique in chat.messages. On a database without duplicates the unique
    index replaces messages_temp; on one that already holds a duplicate (stored by an older broker) the migration
    still succeeds: the index then covers the rows stored from then on, and messages_temp stays for the older ones."""
    def index(name):
        return psql(f"SELECT indexdef FROM pg_indexes WHERE schemaname = 'chat' AND indexname = '{name}'", fresh_database)

    def insert(seq, temp_id):
        psql("INSERT INTO chat.messages(thread_no, seq, id, sender_id, type, content, created_at, temp_id) "
             f"SELECT no, {seq}, 'm{seq}', 'u', 'Text', 'x', now(), '{temp_id}' FROM chat.threads WHERE id = 't1'", fresh_database)

    port = free_port()
    proc = serve(fresh_database, port)
    try:
        wait_healthy(port, proc)
    finally:
        stop([proc])
    assert "UNIQUE" in index("messages_temp_once") and "stored_at" not in index("messages_temp_once")
    assert index("messages_temp") == "", "replaced"
    # Back to version 9 with a duplicate stored, as an older broker could leave it, and an index of the new name that
    # is not unique (as a DBA's failed or wrong build could leave it): rebuilt, not kept.
    psql("DROP INDEX chat.messages_temp_once; CREATE INDEX messages_temp ON chat.messages(thread_no, temp_id) WHERE temp_id IS NOT NULL;"
         "CREATE INDEX messages_temp_once ON chat.messages(thread_no);"
         "DELETE FROM chat.schema_version WHERE version >= 10; ALTER TABLE chat.threads DROP COLUMN members_version;"
         "INSERT INTO chat.threads(id, company_id, kind, created_by, created_at) VALUES ('t1', 'c', 'group', 'u', now())",
         fresh_database)
    insert(1, "dup")
    insert(2, "dup")
    proc = serve(fresh_database, port)
    try:
        wait_healthy(port, proc)
    finally:
        stop([proc])
    assert "UNIQUE" in index("messages_temp_once") and "stored_at >" in index("messages_temp_once"), index("messages_temp_once")
    assert index("messages_temp") != "", "kept for the rows stored before"
    insert(3, "again")
    with pytest.raises(AssertionError, match="messages_temp_once"):
        insert(4, "again")
    # Version 11 ran again after it: every thread has a members version, 0 until its members change.
    assert psql("SELECT members_version FROM chat.threads WHERE id = 't1'", fresh_database) == "0"


def test_ids_compare_as_bytes_in_a_database_with_a_language_collation():
    """Every index key on a text column of the schema compares as bytes (`"C"`), whatever the database's own
    collation: ids are opaque, and a language collation made each comparison in an index descent a `strcoll`
    (Benchmarks/README.md)."""
    name = "t_" + uuid.uuid4().hex[:12]
    created = subprocess.run(
        ["psql", DATABASE_URL.split("?")[0], "-v", "ON_ERROR_STOP=1", "-Atc",
         f"CREATE DATABASE {name} LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0"],
        capture_output=True, text=True, timeout=30)
    if created.returncode != 0 and "ICU" in created.stderr:
        pytest.skip(f"this PostgreSQL has no ICU: {created.stderr.strip()}")
    assert created.returncode == 0, created.stderr
    url = with_path(DATABASE_URL, database=name)
    port = free_port()
    proc = serve(url, port)
    try:
        wait_healthy(port, proc)
        assert psql(f"SELECT datlocprovider FROM pg_database WHERE datname = '{name}'") == "i"   # ICU
        # Each key column of each index with the collation the index compares it under (pg_index.indcollation).
        keys = """
            FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
            JOIN pg_class x ON x.oid = i.indexrelid
            CROSS JOIN LATERAL generate_subscripts(i.indkey, 1) AS k
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k]
            LEFT JOIN pg_collation c ON c.oid = i.indcollation[k]
            WHERE n.nspname = 'chat' AND a.atttypid = 'text'::regtype"""
        not_bytes = psql(f"SELECT x.relname || '.' || a.attname || ' ' || coalesce(c.collname, '?') {keys} "
                         "AND coalesce(c.collname, '') <> 'C' ORDER BY 1", url)
        assert not_bytes == "", f"index keys compared under a language collation:\n{not_bytes}"
        assert int(psql(f"SELECT count(*) {keys}", url)) >= 15   # the query above did look at the id keys
    finally:
        stop([proc])
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
