"""Vault's Kerberos login in front of OpenBao.

OpenBao has no Kerberos auth method.  This TLS server accepts Vault's
Kerberos login, `POST /v1/auth/kerberos-<issuer>_<role>/login` with an
`Authorization: Negotiate <SPNEGO/Kerberos token>` header, checks the
Kerberos token with GSSAPI against the keytab in KRB5_KTNAME, and answers with
a real OpenBao token minted through the root token (`auth/token/create`,
policy `htgettoken`, 672h, metadata `principal` and `service`).  OpenBao's
JSON reply is returned as is.  A missing or bad ticket gets 403
`permission denied`, as from Vault.  Every other request is forwarded to
OpenBao unchanged.

Each successful login appends `<service> <principal>` to the logins file.

usage: vault_shim.py --listen HOST:PORT --cert PEM --key PEM --ca PEM
                     --bao https://HOST:PORT --token ROOT --logins FILE
"""

import argparse
import base64
import http.client
import http.server
import json
import re
import ssl
import sys
import threading
import urllib.parse

import gssapi

LOGIN_PATH = re.compile(r"^/v1/auth/kerberos-([^/?]+)/login/?(\?.*)?$")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


class Shim(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, opts):
        super().__init__(addr, Handler)
        self.opts = opts
        bao = urllib.parse.urlsplit(opts.bao)
        self.bao_host = bao.hostname
        self.bao_port = bao.port
        self.bao_ctx = ssl.create_default_context(cafile=opts.ca)
        self.log_lock = threading.Lock()

    def bao_request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPSConnection(
            self.bao_host, self.bao_port, context=self.bao_ctx, timeout=30
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "managed-tokens-sandbox-vault-shim"

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status, body, headers=()):
        self.send_response(status)
        sent = set()
        for name, value in headers:
            if name.lower() in HOP_BY_HOP:
                continue
            sent.add(name.lower())
            self.send_header(name, value)
        if "content-type" not in sent:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def deny(self):
        body = json.dumps({"errors": ["permission denied"]}).encode()
        self.reply(403, body)

    def handle_any(self):
        body = self.read_body()
        login = LOGIN_PATH.match(self.path)
        if login and self.command in ("POST", "PUT"):
            self.kerberos_login(urllib.parse.unquote(login.group(1)))
        else:
            self.forward(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_LIST = handle_any

    def kerberos_login(self, service):
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "negotiate" or not token.strip():
            self.log_message("kerberos login for %s without a Negotiate token", service)
            return self.deny()
        try:
            creds = gssapi.Credentials(usage="accept")
            ctx = gssapi.SecurityContext(creds=creds, usage="accept")
            out_token = ctx.step(base64.b64decode(token.strip()))
            if not ctx.complete:
                raise gssapi.exceptions.GeneralError("context not complete after one step")
            principal = str(ctx.initiator_name)
        except Exception as err:  # noqa: BLE001 - any GSS failure is a denial
            self.log_message("kerberos login for %s refused: %s", service, err)
            return self.deny()

        request = {
            "policies": ["htgettoken"],
            "ttl": "672h",
            "renewable": True,
            "display_name": f"kerberos-{principal}",
            "meta": {"principal": principal, "service": service},
        }
        status, headers, reply = self.server.bao_request(
            "POST",
            "/v1/auth/token/create",
            body=json.dumps(request).encode(),
            headers={
                "X-Vault-Token": self.server.opts.token,
                "Content-Type": "application/json",
            },
        )
        if status != 200:
            self.log_message("minting a token for %s failed: %s %s", principal, status, reply[:200])
            return self.reply(status, reply, headers)
        with self.server.log_lock:
            with open(self.server.opts.logins, "a", encoding="utf-8") as log:
                log.write(f"{service} {principal}\n")
        self.log_message("kerberos login for %s as %s", service, principal)
        extra = []
        if out_token:
            extra.append(("WWW-Authenticate", "Negotiate " + base64.b64encode(out_token).decode()))
        self.reply(200, reply, [h for h in headers if h[0].lower() == "content-type"] + extra)

    def forward(self, body):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            status, rheaders, reply = self.server.bao_request(
                self.command, self.path, body=body if body else None, headers=headers
            )
        except OSError as err:
            self.log_message("OpenBao unreachable: %s", err)
            msg = json.dumps({"errors": [f"OpenBao unreachable: {err}"]}).encode()
            return self.reply(502, msg)
        self.reply(status, reply, rheaders)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--bao", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--logins", required=True)
    opts = parser.parse_args()

    host, _, port = opts.listen.rpartition(":")
    server = Shim((host, int(port)), opts)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(opts.cert, opts.key)
    # The TLS handshake happens in the request's thread, so a slow or silent
    # client never blocks the accept loop.
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print(f"vault shim listening on https://{opts.listen}, OpenBao at {opts.bao}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
