"""Set up OpenBao for the sandbox through its HTTP API.

  init    --addr URL --ca PEM --out FILE     initialise a fresh server (one
          unseal key), unseal it, create the root token `root`, mount kv v1
          at secret/ and write the `htgettoken` policy; FILE gets the unseal
          key (provision keeps the result as a template every sandbox copies)
  unseal  --addr URL --ca PEM --init FILE [--sandbox JSON]
          unseal a started server, wait until it is the active node, and
          with --sandbox seed it as `seed` does
  seed    --addr URL --ca PEM --sandbox JSON store every service's OAuth
          access token where htgettoken reads it:
          secret/oauth/creds/<issuer>/<credkey>:<role>  access_token=...
"""

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.request

ROOT = "root"

# What htgettoken needs: read the OAuth secrets, exchange its token for a
# shorter one, look itself up and renew itself.
POLICY = """
path "secret/oauth/creds/*"   { capabilities = ["read"] }
path "auth/token/create"      { capabilities = ["create", "update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self"  { capabilities = ["update"] }
"""


class Bao:
    def __init__(self, addr, ca, token=None):
        self.addr = addr.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=ca)
        self.token = token

    def call(self, method, path, body=None, ok=(200, 204)):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.addr}/v1/{path}", data=data, method=method)
        if self.token:
            req.add_header("X-Vault-Token", self.token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        if status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {raw[:300]!r}")
        return status, (json.loads(raw) if raw else {})

    def wait(self, what, test, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                if test():
                    return
            except (OSError, RuntimeError, ValueError) as err:
                last = err
            time.sleep(0.05)
        sys.exit(f"vault_setup: OpenBao not {what} after {timeout}s ({last})")

    def health(self):
        # 200 = initialised, unsealed and active.
        status, _ = self.call("GET", "sys/health", ok=(200, 429, 472, 473, 501, 503))
        return status

    def unseal(self, key, timeout):
        self.wait("listening", lambda: self.health() is not None, timeout)
        self.call("PUT", "sys/unseal", {"key": key})
        self.wait("active", lambda: self.health() == 200, timeout)
        # A freshly elected node answers health before its token store is
        # ready; a lookup with the root token proves it serves requests.
        probe = Bao(self.addr, None, ROOT)
        probe.ctx = self.ctx
        self.wait("serving", lambda: probe.call("GET", "auth/token/lookup-self")[0] == 200, timeout)

    def ensure_layout(self):
        _, mounts = self.call("GET", "sys/mounts")
        table = mounts.get("data", mounts)
        secret = table.get("secret/")
        if secret and (secret.get("type") != "kv" or (secret.get("options") or {}).get("version") == "2"):
            self.call("DELETE", "sys/mounts/secret")
            secret = None
        if not secret:
            self.call("POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "1"}})
        self.call("PUT", "sys/policies/acl/htgettoken", {"policy": POLICY})


def cmd_init(opts):
    bao = Bao(opts.addr, opts.ca)
    bao.wait("listening", lambda: bao.health() is not None, opts.timeout)
    _, init = bao.call("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
    key = init["keys_base64"][0]
    bao.token = init["root_token"]
    bao.call("PUT", "sys/unseal", {"key": key})
    bao.wait("active", lambda: bao.health() == 200, opts.timeout)
    # A root token with the fixed id `root`, as OpenBao's dev mode has.
    bao.call("POST", "auth/token/create-orphan", {"id": ROOT, "policies": ["root"], "display_name": "root"})
    bao.token = ROOT
    bao.ensure_layout()
    with open(opts.out, "w", encoding="utf-8") as out:
        json.dump({"unseal_key": key, "root_token": ROOT}, out)
        out.write("\n")


def cmd_unseal(opts):
    with open(opts.init, encoding="utf-8") as f:
        key = json.load(f)["unseal_key"]
    Bao(opts.addr, opts.ca).unseal(key, opts.timeout)
    if opts.sandbox:
        cmd_seed(opts)


def cmd_seed(opts):
    with open(opts.sandbox, encoding="utf-8") as f:
        sandbox = json.load(f)
    bao = Bao(opts.addr, opts.ca, ROOT)
    bao.ensure_layout()
    for svc in sandbox["services"].values():
        issuer, _, role = svc["real"].partition("_")
        path = f"secret/oauth/creds/{issuer}/{svc['credkey']}:{role}"
        bao.call("PUT", path, {"access_token": svc["bearer_token"]})


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("init", "unseal", "seed"):
        p = sub.add_parser(name)
        p.add_argument("--addr", required=True)
        p.add_argument("--ca", required=True)
        p.add_argument("--timeout", type=float, default=20)
    sub.choices["init"].add_argument("--out", required=True)
    sub.choices["unseal"].add_argument("--init", required=True)
    sub.choices["unseal"].add_argument("--sandbox", help="also seed, as `seed` does")
    sub.choices["seed"].add_argument("--sandbox", required=True)
    opts = parser.parse_args()
    {"init": cmd_init, "unseal": cmd_unseal, "seed": cmd_seed}[opts.cmd](opts)


if __name__ == "__main__":
    main()
