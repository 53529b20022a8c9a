"""Token attacks that test_connect_auth.py and test_rest.py do not already cover, on the socket path (CONNECT
auth payload and handshake header) and the REST path: HS384/RS256 confusion, not-yet-valid (nbf), claims of
the wrong type, empty claims, huge tokens, malformed base64/JSON, a valid signature under a forged header, a
`crit` header naming extensions the broker does not understand, runs of combining marks."""
import base64
import hashlib
import hmac
import json
import time

import pytest

from conftest import SECRET, assert_http_error, token, uid


def _b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _forge(header, claims, key=SECRET.encode(), digest=hashlib.sha256):
    """A JWT with an arbitrary header, HMAC-signed with `key` (the classic alg-confusion shape)."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    sig = hmac.new(key, signing_input.encode(), digest).digest()
    return signing_input + "." + _b64(sig)


def _forge_raw(header_json, claims_json, key=SECRET.encode()):
    """A JWT of exactly these JSON texts (json.dumps cannot name a key twice), HMAC-signed with `key`."""
    signing_input = _b64(header_json.encode()) + "." + _b64(claims_json.encode())
    return signing_input + "." + _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def _stray_bits(tok):
    """`tok` with the unused low bits of its signature's last character set: the same bytes, spelled another way."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    head, sig = tok.rsplit(".", 1)
    assert len(sig) % 4 == 3                                   # 32 bytes: 43 characters, 2 bits unused
    return head + "." + sig[:-1] + alphabet[alphabet.index(sig[-1]) | 1]


def _claims(**over):
    c = {"sub": "u-" + uid(), "companyId": "c-" + uid(), "exp": int(time.time()) + 600}
    c.update(over)
    return c


def _attacks():
    now = int(time.time())
    return {
        # RS256 header, HMAC signature with the shared secret as the "public key"
        "rs256_confusion": _forge({"alg": "RS256", "typ": "JWT"}, _claims()),
        "hs384": token("u", "c", algorithm="HS384"),
        "hs256_header_hs512_sig": _forge({"alg": "HS256", "typ": "JWT"}, _claims(), digest=hashlib.sha512),
        "alg_none_with_sig": _forge({"alg": "none", "typ": "JWT"}, _claims()),
        "alg_missing": _forge({"typ": "JWT"}, _claims()),
        "alg_lowercase": _forge({"alg": "hs256", "typ": "JWT"}, _claims()),
        "alg_array": _forge({"alg": ["HS256"], "typ": "JWT"}, _claims()),
        # a critical extension the broker does not understand (RFC 7515 §4.1.11): refused, however well signed
        "crit_extension": _forge({"alg": "HS256", "typ": "JWT", "crit": ["exp-bound"], "exp-bound": 1}, _claims()),
        "crit_empty": _forge({"alg": "HS256", "typ": "JWT", "crit": []}, _claims()),
        "nbf_future": _forge({"alg": "HS256", "typ": "JWT"}, _claims(nbf=now + 3600)),
        # jsonwebtoken (the NestJS gateway's library) refuses a time claim that is not a number: "invalid nbf value"
        "nbf_null": _forge({"alg": "HS256", "typ": "JWT"}, _claims(nbf=None)),
        "nbf_string": _forge({"alg": "HS256", "typ": "JWT"}, _claims(nbf=str(now - 60))),
        "exp_null": _forge({"alg": "HS256", "typ": "JWT"}, _claims(exp=None)),
        "sub_int": _forge({"alg": "HS256", "typ": "JWT"}, _claims(sub=42)),
        "sub_empty": _forge({"alg": "HS256", "typ": "JWT"}, _claims(sub="")),
        "sub_null": _forge({"alg": "HS256", "typ": "JWT"}, _claims(sub=None)),
        "company_int": _forge({"alg": "HS256", "typ": "JWT"}, _claims(companyId=7)),
        "company_empty": _forge({"alg": "HS256", "typ": "JWT"}, _claims(companyId="")),
        "company_object": _forge({"alg": "HS256", "typ": "JWT"}, _claims(companyId={"id": "c"})),
        "exp_string": _forge({"alg": "HS256", "typ": "JWT"}, _claims(exp="tomorrow")),
        "claims_array": _forge({"alg": "HS256", "typ": "JWT"}, [1, 2, 3]),
        "huge_claim": _forge({"alg": "HS256", "typ": "JWT"}, _claims(pad="x" * 20000)),
        "two_parts": token("u", "c").rsplit(".", 1)[0],
        "four_parts": token("u", "c") + ".AAAA",
        "bad_base64": "!!!." + token("u", "c").split(".", 1)[1],
        "header_not_json": _b64(b"{not json") + "." + token("u", "c").split(".", 1)[1],
        "deep_header": _b64(b'{"alg":' + b"[" * 5000 + b"]" * 5000 + b"}") + "." + token("u", "c").split(".", 1)[1],
        "dots_only": "..",
        "unicode": "ťøκęñ.ťøκęñ.ťøκęñ",
        # runs of more than 30 combining marks (see test_preauth_dos.py): refused before JWTKit decodes them,
        # however well signed
        "marks_in_header_key": _forge({"alg": "HS256", "typ": "JWT", "x" + "\u0301" * 300 + "\u0316" * 300: 1}, _claims()),
        "marks_in_claim": _forge({"alg": "HS256", "typ": "JWT"}, _claims(pad="e" + "\u0301" * 31)),
        # one token, other spellings (found by an outside probe): padding, stray bits, a trailing space
        "sig_padded": token("u", "c") + "=",
        "sig_stray_bits": _stray_bits(token("u", "c")),
        "trailing_space": token("u", "c") + " ",
        # a key named twice (outside probe): JWTKit took a repeated claim's first value, JavaScript takes its last, so
        # one token named another company, role or expiry here than in a NestJS gateway; now refused
        "claims_company_twice": _forge_raw('{"alg":"HS256","typ":"JWT"}',
                                           f'{{"sub":"u-{uid()}","companyId":"c-{uid()}","companyId":"c-{uid()}","exp":{now + 600}}}'),
        "claims_exp_twice": _forge_raw('{"alg":"HS256","typ":"JWT"}',
                                       f'{{"sub":"u-{uid()}","companyId":"c-{uid()}","exp":{now + 600},"exp":1}}'),
        "claims_role_twice": _forge_raw('{"alg":"HS256","typ":"JWT"}',
                                        f'{{"sub":"u-{uid()}","companyId":"c-{uid()}","exp":{now + 600},"role":"service","role":"user"}}'),
        "header_alg_twice": _forge_raw('{"alg":"none","alg":"HS256","typ":"JWT"}',
                                       f'{{"sub":"u-{uid()}","companyId":"c-{uid()}","exp":{now + 600}}}'),
    }


ATTACKS = list(_attacks())


@pytest.mark.parametrize("case", ATTACKS)
def test_token_attack_refused_on_connect(h, case):
    tok = _attacks()[case]
    err = h.connect_error(tok)
    assert isinstance(err.data, dict), err.data
    expected = "token expired" if case == "expired" else "invalid token"
    assert expected in err.message, (case, err.message)


@pytest.mark.parametrize("case", ["rs256_confusion", "hs384", "nbf_future", "sub_int", "company_empty", "huge_claim"])
def test_token_attack_refused_in_handshake_header(h, case):
    err = h.connect_error(None, auth=None, headers={"Authorization": "Bearer " + _attacks()[case]})
    assert "invalid token" in err.message, (case, err.message)


@pytest.mark.parametrize("transports", [("websocket",), ("polling",)])
def test_a_huge_token_in_the_handshake_header_is_invalid_and_a_padded_valid_one_works(h, transports):
    """A 60 KiB bearer token in the handshake header (kept only in part while the session awaits its CONNECT) is
    refused as invalid, not as missing; a valid one with spaces around it still connects."""
    huge = "a" * 30000 + "." + "b" * 30000 + ".c"
    err = h.connect_error(None, transports=transports, auth=None, headers={"Authorization": "Bearer " + huge})
    assert "invalid token" in err.message, err.message
    c = h.connect(None, transports=transports, auth=None,
                  headers={"Authorization": "Bearer  " + token(uid("u"), uid("co")) + " "})
    assert c.connected


@pytest.mark.parametrize("case", ATTACKS)
def test_token_attack_refused_on_rest(server, case):
    if case == "trailing_space":
        pytest.skip("an HTTP header value ends at its last non-space character: the space is not the token's")
    tok = _attacks()[case]
    if case == "unicode":
        tok = tok.encode("utf-8").decode("latin-1")     # the raw UTF-8 bytes in the header
    r = server.rest("GET", "/chat/threads", tok)
    assert_http_error(r, 401, "unauthenticated")
    r = server.rest("POST", "/chat/threads", tok, json={"type": "group", "memberIds": []})
    assert_http_error(r, 401, "unauthenticated")


def test_huge_token_socket_and_rest(h, server):
    """A 64 KiB token: refused without trouble, and the broker serves the next client normally."""
    huge = "a" * 32768 + "." + "b" * 32768 + ".c"
    err = h.connect_error(huge)
    assert "invalid token" in err.message
    r = server.rest("GET", "/chat/threads", huge)
    assert r.status_code in (401, 431, 400), r.status_code      # refused: by the verifier or the HTTP parser
    co = uid("co")
    c = h.connect(token(uid("ok"), co))
    assert c.connected


def test_valid_nbf_in_the_past_is_accepted(h, server):
    """The nbf check is real, not a blanket refusal of tokens carrying nbf."""
    tok = _forge({"alg": "HS256", "typ": "JWT"}, _claims(nbf=int(time.time()) - 60))
    assert server.rest("GET", "/chat/threads", tok).status_code == 200
    assert h.connect(tok).connected
