"""The `chat-broker` command line itself: `token`, the generated secret, refusal of short secrets, flags."""
import os
import shlex
import stat
import subprocess
import tempfile

import jwt
import pytest

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
