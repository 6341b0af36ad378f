"""Write a sandbox's descriptions: DIR/env, DIR/managedTokens.yml, DIR/sandbox.json.

usage: write_outputs.py DIR

Reads the ports chosen for the sandbox from DIR/ports.env and the fixed shape
from layout.py.  DIR/env holds the shell exports the product's children need;
DIR/managedTokens.yml is a product configuration in the managed-tokens
schema pointing at the sandbox; DIR/sandbox.json describes everything for
tests (the same environment as a JSON object, PATH expanded).
"""

import base64
import json
import os
import pwd
import secrets
import shlex
import sys
import time

import layout


def read_ports(path):
    ports = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                ports[key] = int(value)
    return ports


def node_key(node):
    return "NODE_" + node.replace(".", "_")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fake_jwt(service, account):
    """A bearer token shaped like a WLCG JWT, distinct for every service."""
    now = int(time.time())
    issuer, _, role = service.partition("_")
    header = {"alg": "none", "typ": "JWT", "kid": "sandbox"}
    claims = {
        "iss": f"https://sandbox.test/{issuer}",
        "sub": layout.credkey(account),
        "aud": "https://wlcg.cern.ch/jwt/v1/any",
        "wlcg.ver": "1.0",
        "wlcg.groups": [f"/{issuer}", f"/{issuer}/{role}"],
        "scope": "storage.read:/ compute.create",
        "iat": now,
        "nbf": now,
        "exp": now + 3 * 3600,
        "jti": secrets.token_hex(16),
    }
    return ".".join(
        [
            b64url(json.dumps(header, separators=(",", ":")).encode()),
            b64url(json.dumps(claims, separators=(",", ":")).encode()),
            b64url(secrets.token_bytes(32)),
        ]
    )


def q(value):
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def main(d):
    ports = read_ports(os.path.join(d, "ports.env"))
    p = lambda *parts: os.path.join(d, *parts)  # noqa: E731

    shim = f"https://localhost:{ports['SHIM']}"
    collector = f"127.0.0.1:{ports['COLLECTOR']}"
    credds = [f"127.0.0.1:{ports['CREDD1']}", f"127.0.0.1:{ports['CREDD2']}"]
    smtp_port = ports["SMTP"]
    ca = p("vault", "tls", "vault-ca.pem")

    # ---- DIR/env -------------------------------------------------------
    exports = [
        ("KRB5_CONFIG", p("krb5.conf")),
        ("PATH", p("bin") + ":$PATH"),
        ("HTGETTOKENOPTS", f"--cafile={ca}"),
        ("CONDOR_CONFIG", p("condor", "condor_config")),
        ("MANAGED_TOKENS_CONFIG", p("managedTokens.yml")),
    ]
    with open(p("env"), "w", encoding="utf-8") as f:
        f.write("# Environment for managed-tokens and its children in this sandbox.\n")
        for key, value in exports:
            if key == "PATH":
                f.write(f'export PATH="{p("bin")}:$PATH"\n')
            else:
                f.write(f"export {key}={shlex.quote(value)}\n")
    env = {}
    for key, value in exports:
        env[key] = value.replace("$PATH", os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))

    # ---- services --------------------------------------------------------
    services = {}
    bearer = {}
    for svc in layout.services():
        account = svc["account"]
        try:
            uid = pwd.getpwnam(account).pw_uid
        except KeyError:
            sys.exit(f"write_outputs: no local account {account}; run `scripts/sandbox provision`")
        if svc["real"] not in bearer:
            bearer[svc["real"]] = fake_jwt(svc["real"], account)
        services[svc["name"]] = {
            "real": svc["real"],
            "experiment": svc["name"].rsplit("_", 1)[0],
            "role": svc["role"],
            "account": account,
            "uid": uid,
            "principal": layout.principal(account),
            "credkey": layout.credkey(account),
            "keytab": p("keytabs", f"{account}.keytab"),
            "nodes": svc["nodes"],
            "emails": svc["emails"],
            "credd_override": credds[0] if svc["first_credd_override"] else None,
            "bearer_token": bearer[svc["real"]],
        }

    # ---- DIR/managedTokens.yml ----------------------------------------------
    y = [
        "# managed-tokens configuration for the sandbox in " + d,
        f"keytabPath: {q(p('keytabs'))}",
        'kerberosPrincipalPattern: "{{.Account}}/managedtokens@' + layout.REALM + '"',
        f"condorCollectorHost: {q(collector)}",
        'condorScheddConstraint: "ManagedTokensSandbox =?= true"',
        f"vaultServer: {q(shim)}",
        f"serviceCreddVaultTokenPathRoot: {q(p('store'))}",
        f"dbLocation: {q(p('state', 'managed-tokens.db'))}",
        "minTokenLifetime: 1h",
        "errorCountToSendMessage: 1",
        f"sshOptions: {q('-F ' + p('ssh', 'ssh_config'))}",
        'pingOptions: "-W 1"',
        'defaultRoleFileDestinationTemplate: "/tmp/default_role_{{.Experiment}}_{{.DesiredUID}}"',
        "devEnvironmentLabel: sandbox",
        "timeouts: {globalTimeout: 300s, kerberosTimeout: 20s, vaultStorerTimeout: 60s, pingTimeout: 10s, pushTimeout: 30s}",
        "workerType: {pushTokens: {numRetries: 1, retrySleep: 2s}}",
        f'email: {{from: "managed-tokens@sandbox.test", smtpHost: 127.0.0.1, smtpPort: {smtp_port}}}',
        'notifications: {admin_email: "admins@sandbox.test"}',
        'notifications_test: {admin_email: "test-admins@sandbox.test"}',
        "experiments:",
    ]
    for exp in layout.EXPERIMENTS:
        y.append(f"  {exp['name']}:")
        if "override" in exp:
            y.append(f"    experimentOverride: {exp['override']}")
        y.append(f"    emails: [{', '.join(q(e) for e in exp['emails'])}]")
        y.append("    roles:")
        for role in exp["roles"]:
            fields = [f"account: {role['account']}"]
            fields.append(f"destinationNodes: [{', '.join(q(n) for n in role['nodes'])}]")
            if role.get("first_credd_override"):
                fields.append(f"condorCreddHostOverride: {q(credds[0])}")
            y.append(f"      {role['role']}: {{{', '.join(fields)}}}")
    with open(p("managedTokens.yml"), "w", encoding="utf-8") as f:
        f.write("\n".join(y) + "\n")

    # ---- DIR/sandbox.json ----------------------------------------------------
    doc = {
        "dir": d,
        "config": p("managedTokens.yml"),
        "env": env,
        "store": p("store"),
        "db": p("state", "managed-tokens.db"),
        "mail": p("mail", "maildir"),
        "bin": p("bin"),
        "ssh_config": p("ssh", "ssh_config"),
        "condor_config": p("condor", "condor_config"),
        "vault": {
            "addr": shim,
            "bao_addr": f"https://127.0.0.1:{ports['BAO']}",
            "ca": ca,
            "root_token": "root",
            "logins": p("vault", "logins.log"),
        },
        "kdc": {
            "realm": layout.REALM,
            "krb5_config": p("krb5.conf"),
            "address": f"127.0.0.1:{ports['KDC']}",
        },
        "collector": collector,
        "credds": credds,
        "smtp": f"127.0.0.1:{smtp_port}",
        "nodes": {
            node: {"tmp": p("nodes", node, "tmp"), "port": ports[node_key(node)]}
            for node in layout.NODES
        },
        "services": services,
    }
    tmp = p("sandbox.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.rename(tmp, p("sandbox.json"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: write_outputs.py DIR")
    main(os.path.abspath(sys.argv[1]))
