"""The `chat-broker` command line itself: `token`, the generated secret, refusal of short secrets, flags."""
import os
import shlex
import socket
import stat
import subprocess
import tempfile

import jwt
import pytest
import requests

from conftest import AGAINST_PEER, SERVER_CMD, ServerProcess, uid

pytestmark = pytest.mark.skipif(AGAINST_PEER, reason="exercises the chat-broker executable itself")


def binary():
    return shlex.split(SERVER_CMD)[0]


def run(args, env_extra=None, timeout=20):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(env_extra or {})
    return subprocess.run([binary()] + args, capture_output=True, text=True, env=env, timeout=timeout)


def test_token_command_signs_with_the_configured_secret():
    secret = "s" * 40
    out = run(["token", "--user", "u1", "--company", "c1", "--ttl", "120"], {"CHAT_JWT_SECRET": secret})
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "u1" and claims["companyId"] == "c1"
    assert 60 < claims["exp"] - __import__("time").time() <= 121
    # A whole second: some verifiers take only an integer NumericDate.
    assert isinstance(claims["exp"], int), claims


@pytest.mark.parametrize("args,names", [
    (["--user", ""], "--user"), (["--user", "e\u0301"], "--user"), (["--company", "a\u0000b"], "--company"),
    (["--user", "u" * 257], "--user"), (["--log-level", "loud"], "--log-level"),
    (["--user", "bob\u200b"], "bob\\u{200b}"), (["--company", "acme\u3164"], "acme\\u{3164}"),
    (["--role", "Service"], "--role"), (["--role", "admin"], "--role"), (["--role", ""], "--role"),
])
def test_token_command_refuses_what_the_broker_would_refuse(args, names):
    """A token the broker would refuse (an empty, non-NFC, over-long id, or one with U+0000 or an invisible
    character, which the refusal shows escaped), or a role it does not know (a plain user's token that looked like
    more: an outside probe), is not printed, and its flags are checked as serve's are: a usage
    error (64) naming the flag."""
    base = {"--user": "u1", "--company": "c1"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["token"] + [x for k, v in base.items() for x in (k, v)]
    try:
        out = run(argv, {"CHAT_JWT_SECRET": "s" * 40})
    except ValueError:   # U+0000 cannot be an argv entry: give it through nothing else; skip
        pytest.skip("an argument cannot hold U+0000")
    assert out.returncode == 64 and not out.stdout.strip(), (out.returncode, out.stdout, out.stderr)
    assert names in out.stderr, out.stderr


def test_what_serve_cannot_use_is_a_usage_error_naming_the_flag():
    """A data directory that is a file, a host that is no address, a port in use: exit 64 with the flag named, as
    for any bad value (and never a crash or a hang)."""
    d = tempfile.mkdtemp()
    a_file = os.path.join(d, "file")
    open(a_file, "w").close()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        for args, flag in ((["--data-dir", a_file, "--port", "0"], "--data-dir"),
                           (["--data-dir", os.path.join(d, "a"), "--host", "999.1.1.1", "--port", "0"], "--host"),
                           (["--data-dir", os.path.join(d, "b"), "--port", str(busy.getsockname()[1])], "--port")):
            out = run(["serve"] + args, {"CHAT_JWT_SECRET": "s" * 40}, timeout=30)
            assert out.returncode == 64, (args, out.returncode, out.stderr[-2000:])
            assert flag in out.stderr, out.stderr[-2000:]
        # With no secret configured the secret is made in the data directory first: the same error.
        out = run(["serve", "--data-dir", a_file, "--port", "0"], timeout=30)
        assert out.returncode == 64 and "--data-dir" in out.stderr, (out.returncode, out.stderr[-2000:])
    finally:
        busy.close()


def test_a_second_broker_on_the_same_data_directory_is_refused(server):
    """Two brokers on one SQLite data directory (an overlapping restart, a mistake) would number the same threads each
    from its own memory: the second fails every send the first made after its own, and neither delivers the other's
    messages live (found by an outside probe). The second is refused at start with exit 64, naming --data-dir; the
    first goes on."""
    out = run(["serve", "--data-dir", server.data_dir, "--port", "0"], {"CHAT_JWT_SECRET": "s" * 40}, timeout=30)
    assert out.returncode == 64, (out.returncode, out.stderr[-2000:])
    assert "--data-dir" in out.stderr and "in use by another process" in out.stderr, out.stderr[-2000:]
    assert requests.get(server.url + "/health", timeout=5).status_code == 200


@pytest.mark.parametrize("origins", ["https://app.example/", "null", "app.example", "https://app.example/path",
                                     "https://user@app.example", "https://app.example:0", "https://app.example:99999",
                                     "https://a.example,ftp//b.example"])
def test_a_cors_origin_that_could_never_match_is_a_usage_error(origins):
    """An origin as browsers send it is scheme://host[:port]: a trailing slash or a path never matches (CORS silently
    fails), and `null` (sandboxed pages, local files) would let any of them in. Exit 64 naming the flag."""
    out = run(["serve", "--port", "0", "--data-dir", tempfile.mkdtemp(), "--cors-origins", origins],
              {"CHAT_JWT_SECRET": "s" * 40}, timeout=30)
    assert out.returncode == 64, (origins, out.returncode, out.stderr[-2000:])
    assert "--cors-origins" in out.stderr and "is not an origin" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("args,message", [(["--port", "-1"], "--port is -1; it must be between 0 and 65535"),
                                          (["--rate-per-sec", "-5"], "--rate-per-sec is -5"),
                                          (["--port", "--rate-per-sec"], "--port \"--rate-per-sec\" is not a whole number")])
def test_a_negative_number_is_a_value_out_of_range_not_an_unknown_flag(args, message):
    out = run(["serve", "--data-dir", tempfile.mkdtemp()] + args, {"CHAT_JWT_SECRET": "s" * 40}, timeout=30)
    assert out.returncode == 64 and message in out.stderr, (args, out.returncode, out.stderr[-2000:])


@pytest.mark.parametrize("ttl", ["0", "-5", "31622401", "nan"])
def test_token_command_refuses_a_ttl_out_of_range_with_a_message_that_says_so(ttl):
    out = run(["token", "--user", "u1", "--company", "c1", "--ttl", ttl], {"CHAT_JWT_SECRET": "s" * 40})
    assert out.returncode == 64, (out.returncode, out.stderr)
    assert "--ttl must be more than 0 and at most 31622400 seconds" in out.stderr, out.stderr


def test_short_secret_is_refused_at_start_up():
    out = run(["serve", "--port", "1", "--data-dir", tempfile.mkdtemp()], {"CHAT_JWT_SECRET": "too-short"})
    assert out.returncode != 0
    assert "32" in (out.stderr + out.stdout)


def test_generated_secret_is_private_reused_and_used_by_token():
    srv = ServerProcess(secret=None)
    try:
        srv.start()
        path = os.path.join(srv.data_dir, "jwt-secret")
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600, oct(mode)
        secret = open(path).read().strip()
        assert len(secret.encode()) >= 32
        # `token` with the same data dir signs with the stored secret, and the broker accepts it
        out = run(["token", "--user", uid("u"), "--company", "c", "--data-dir", srv.data_dir])
        assert out.returncode == 0, out.stderr
        tok = out.stdout.strip()
        jwt.decode(tok, secret, algorithms=["HS256"])
        assert srv.rest("GET", "/chat/threads", tok).status_code == 200
        srv.stop()
        srv.restart()
        assert open(path).read().strip() == secret, "the generated secret must be written once and reused"
        assert srv.rest("GET", "/chat/threads", tok).status_code == 200
    finally:
        srv.cleanup()


def test_a_secret_file_is_read_as_bytes_and_a_new_data_directory_is_private():
    """A secret file's bytes are the key (a binary key from /dev/urandom works; its invalid UTF-8 is not replaced), so
    11 bytes of 0xFF are 11 bytes, too short; and the data directory the broker creates, with the generated secret in
    it, is readable by its owner only."""
    d = tempfile.mkdtemp()
    binary_key = os.urandom(32) + b"\xff\xfe"
    with open(os.path.join(d, "binary"), "wb") as fh:
        fh.write(binary_key + b"\n")
    out = run(["token", "--user", "a", "--company", "b", "--jwt-secret-file", os.path.join(d, "binary")])
    assert out.returncode == 0, out.stderr
    jwt.decode(out.stdout.strip(), binary_key.strip(b" \t\n\r\x0b\x0c"), algorithms=["HS256"])
    # A text secret is trimmed as before, Unicode whitespace included (existing keys stay the same).
    with open(os.path.join(d, "text"), "w", encoding="utf-8") as fh:
        fh.write("\u00a0" + "t" * 40 + "\u3000\n")
    out = run(["token", "--user", "a", "--company", "b", "--jwt-secret-file", os.path.join(d, "text")])
    jwt.decode(out.stdout.strip(), "t" * 40, algorithms=["HS256"])
    with open(os.path.join(d, "short"), "wb") as fh:
        fh.write(b"\xff" * 11)
    out = run(["token", "--user", "a", "--company", "b", "--jwt-secret-file", os.path.join(d, "short")])
    assert out.returncode != 0 and "11 bytes" in out.stderr + out.stdout, out.stderr
    data = os.path.join(d, "new", "data")
    out = run(["token", "--user", "a", "--company", "b", "--data-dir", data])
    assert out.returncode != 0, "token does not generate a secret"
    srv = ServerProcess(secret=None, data_dir=data)
    try:
        srv.start()
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700, oct(os.stat(data).st_mode)
        assert stat.S_IMODE(os.stat(os.path.join(data, "jwt-secret")).st_mode) == 0o600
    finally:
        srv.cleanup()


def test_secret_file_flag_and_env():
    d = tempfile.mkdtemp()
    f = os.path.join(d, "secret")
    with open(f, "w") as fh:
        fh.write("f" * 48 + "\n")
    out = run(["token", "--user", "a", "--company", "b", "--jwt-secret-file", f])
    assert out.returncode == 0, out.stderr
    jwt.decode(out.stdout.strip(), "f" * 48, algorithms=["HS256"])
    out = run(["token", "--user", "a", "--company", "b"], {"CHAT_JWT_SECRET_FILE": f})
    assert out.returncode == 0, out.stderr
    # CHAT_JWT_SECRET wins over the file
    out = run(["token", "--user", "a", "--company", "b"], {"CHAT_JWT_SECRET_FILE": f, "CHAT_JWT_SECRET": "e" * 40})
    jwt.decode(out.stdout.strip(), "e" * 40, algorithms=["HS256"])


def test_bad_durability_flag_is_a_clear_error():
    out = run(["serve", "--durability", "sometimes", "--data-dir", tempfile.mkdtemp()], {"CHAT_JWT_SECRET": "k" * 40})
    assert out.returncode != 0
    assert "durability" in (out.stderr + out.stdout)


# ------------------------------------------------------------------ start-up validation of every flag and variable

CRASH_CODES = {132, 133, 134, 136, 139}   # SIGILL (Swift trap), SIGTRAP, SIGABRT, SIGFPE, SIGSEGV as 128 + n


def serve_expecting_refusal(args, env_extra=None, timeout=10.0):
    """Starts `serve` with a free port, a temp data dir and a 48-character secret plus `args`/`env_extra`,
    and waits for it to exit: a broker that starts instead (answers /health) or is still running after
    `timeout` is stopped and reported. Returns the CompletedProcess-like (returncode, stdout, stderr)."""
    import signal
    import time

    import requests

    from conftest import free_port
    port = free_port()
    base = ["serve", "--host", "127.0.0.1", "--data-dir", tempfile.mkdtemp(prefix="chat-cli-")]
    if not any(a == "--port" or a.startswith("--port=") for a in args) and "CHAT_PORT" not in (env_extra or {}):
        base += ["--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["CHAT_JWT_SECRET"] = "v" * 48
    env.update(env_extra or {})
    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    p = subprocess.Popen([binary()] + base + list(args), stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL,
                         env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    started = False
    try:
        while p.poll() is None and time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=0.3).status_code == 200:
                    started = True
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
    out_f.seek(0)
    err_f.seek(0)
    out, err = out_f.read().decode("utf-8", "replace"), err_f.read().decode("utf-8", "replace")
    what = f"serve {' '.join(args)} {env_extra or ''}"
    assert not started, f"{what}: the broker started instead of refusing the value; stderr:\n{err[-1500:]}"
    assert p.returncode is not None and p.returncode != -signal.SIGKILL, \
        f"{what}: still running after {timeout}s (a hang); stderr:\n{err[-1500:]}"
    assert p.returncode >= 0 and p.returncode not in CRASH_CODES, \
        f"{what}: crashed (status {p.returncode}) instead of a usage error; stderr:\n{err[-1500:]}"
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def assert_usage_error(out, names):
    """Exit 64 (EX_USAGE, as ArgumentParser's ValidationError), a message naming the flag or variable, and
    not ArgumentParser's "unknown option" (the flag must exist)."""
    text = out.stderr + out.stdout
    assert out.returncode == 64, f"exit status {out.returncode}, expected 64 (usage error); stderr:\n{text[-1500:]}"
    assert any(n in text for n in names), f"the message does not name {names}:\n{text[-1500:]}"
    assert "unknown option" not in text.lower(), text[-1500:]


BAD_FLAGS = [
    # negative
    ("--typing-timeout=-1",), ("--ping-interval=-1",), ("--ping-timeout=-1",), ("--connect-timeout=-5",),
    ("--rate-per-sec=-1",), ("--rate-burst=-1",), ("--max-content=-3",), ("--max-receipt-ids=-1",),
    ("--sync-limit=-1",), ("--slow-consumer-grace=-1",), ("--shutdown-grace=-1",), ("--shutdown-grace", "nan"),
    ("--shutdown-grace", "601"), ("--thread-memory-budget=-1",), ("--thread-memory-budget", "1.5"),
    ("--thread-memory-budget", "99999999999"), ("--max-sockets-per-user=-1",), ("--port=-1",),
    # zero where it means nothing
    ("--ping-interval", "0"), ("--ping-timeout", "0"), ("--max-payload", "0"), ("--outbound-limit", "0"),
    ("--max-members-per-request", "0"), ("--max-content", "0"), ("--sync-limit", "0"),
    # absurdly large
    ("--ping-interval", "1e12"), ("--ping-timeout", "1e12"), ("--typing-timeout", "1e300"),
    ("--connect-timeout", "1e300"), ("--max-payload", "99999999999999"), ("--port", "70000"),
    # not decimal (Swift's Double reads hexadecimal: 0x10 was a ping interval of 16 s; found by an outside probe)
    ("--ping-interval", "0x10"), ("--typing-timeout", "0x1p3"),
    # not a number
    ("--ping-interval", "abc"), ("--max-content", "12x"), ("--port", "http"),
    # nan / inf
    ("--ping-timeout", "nan"), ("--typing-timeout", "inf"), ("--ping-interval=-inf",), ("--rate-per-sec", "nan"),
    # not one of the words
    ("--durability", "sometimes"), ("--ws-compression", "maybe"), ("--log-level", "loud"),
]


def _flag_name(args):
    return args[0].split("=")[0]


@pytest.mark.parametrize("args", BAD_FLAGS, ids=lambda a: " ".join(a))
def test_bad_flag_value_is_a_usage_error(args):
    out = serve_expecting_refusal(list(args))
    flag = _flag_name(args)
    assert_usage_error(out, [flag, flag.lstrip("-")])


BAD_ENV = [
    ("CHAT_PING_INTERVAL", "-1"), ("CHAT_PING_TIMEOUT", "nan"), ("CHAT_TYPING_TIMEOUT", "inf"),
    ("CHAT_CONNECT_TIMEOUT", "-5"), ("CHAT_RATE_PER_SEC", "-1"), ("CHAT_MAX_CONTENT", "abc"),
    ("CHAT_MAX_PAYLOAD", "0"), ("CHAT_OUTBOUND_LIMIT", "0"), ("CHAT_MAX_MEMBERS_PER_REQUEST", "0"),
    ("CHAT_SYNC_LIMIT", "12x"), ("CHAT_PORT", "70000"), ("CHAT_PORT", "abc"),
    ("CHAT_DURABILITY", "sometimes"), ("CHAT_WS_COMPRESSION", "maybe"), ("CHAT_LOG_LEVEL", "loud"),
]


@pytest.mark.parametrize("var,value", BAD_ENV, ids=lambda v: str(v))
def test_bad_environment_value_is_a_usage_error(var, value):
    """Every serve flag is also read from CHAT_<FLAG> (dashes as underscores) and validated alike."""
    out = serve_expecting_refusal([], {var: value})
    assert_usage_error(out, [var])


@pytest.mark.parametrize("content", ["short-token", "a token with spaces in it, long enough to pass the length", "\u00e9" * 40],
                         ids=["short", "spaces", "non-ascii"])
def test_a_metrics_token_that_cannot_be_a_bearer_token_is_a_usage_error(content, tmp_path):
    path = tmp_path / "metrics-token"
    path.write_text(content)
    assert_usage_error(serve_expecting_refusal(["--metrics-token-file", str(path)]), ["--metrics-token-file"])
    assert_usage_error(serve_expecting_refusal([], {"CHAT_METRICS_TOKEN_FILE": str(path)}), ["CHAT_METRICS_TOKEN_FILE"])


def test_a_metrics_token_file_that_cannot_be_read_is_a_usage_error(tmp_path):
    assert_usage_error(serve_expecting_refusal(["--metrics-token-file", str(tmp_path / "missing")]), ["--metrics-token-file"])


def test_bad_durability_env_is_refused_even_with_a_good_flag_elsewhere():
    out = serve_expecting_refusal(["--max-content", "64"], {"CHAT_DURABILITY": "eventually"})
    assert_usage_error(out, ["CHAT_DURABILITY"])


@pytest.mark.parametrize("args", [
    ("--port", "0"), ("--ping-interval", "0.5"), ("--ping-timeout", "0.5"), ("--typing-timeout", "0.5"),
    ("--connect-timeout", "0.5"), ("--max-members-per-request", "1"), ("--ws-compression", "on"),
    ("--durability", "process"), ("--log-level", "warning"),
], ids=lambda a: " ".join(a))
def test_unusual_but_valid_values_start(args):
    """The validation refuses nonsense, not edge values: `--port 0` picks a free port."""
    import signal
    import time
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["CHAT_JWT_SECRET"] = "v" * 48
    from conftest import free_port
    base = ["serve", "--host", "127.0.0.1", "--data-dir", tempfile.mkdtemp(prefix="chat-cli-")]
    if args[0] != "--port":
        base += ["--port", str(free_port())]
    err_f = tempfile.TemporaryFile()
    p = subprocess.Popen([binary()] + base + list(args), stdout=subprocess.DEVNULL, stderr=err_f,
                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        time.sleep(2.0)
        alive = p.poll() is None
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
    err_f.seek(0)
    err = err_f.read().decode("utf-8", "replace")
    assert alive, f"serve {' '.join(args)} exited with {p.returncode}:\n{err[-1500:]}"
    assert p.returncode == 0, f"SIGTERM: exit {p.returncode}:\n{err[-1500:]}"


def test_limit_flags_are_read_from_the_environment():
    """CHAT_MAX_CONTENT and CHAT_MAX_MEMBERS_PER_REQUEST act like --max-content and --max-members-per-request."""
    from conftest import harness_for, running_server, token
    with running_server(env={"CHAT_MAX_CONTENT": "64", "CHAT_MAX_MEMBERS_PER_REQUEST": "3"}) as srv, \
            harness_for(srv) as h:
        co = uid("co")
        ta = token("alice", co)
        r = h.rest("POST", "/chat/threads", ta, json={"type": "group", "memberIds": ["b", "c", "d", "e"]})
        assert r.status_code == 413, r.text
        tid = h.make_thread(ta, ["b", "c", "d"])["id"]
        a = h.connect(ta)
        assert a.call("chat:send", {"threadId": tid, "content": "x" * 64})["success"] is True
        ack = a.call("chat:send", {"threadId": tid, "content": "x" * 65})
        assert ack.get("success") is False and ack.get("code") == "payload_too_large", ack
