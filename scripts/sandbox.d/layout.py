"""The fixed shape of a managed-tokens sandbox: accounts, nodes and services.

Every helper under scripts/sandbox.d reads the layout from here so the KDC
principals, the Vault seed data, the product configuration and sandbox.json
always agree.  `python3 layout.py shell` prints bash array assignments for
scripts/sandbox.
"""

import sys

REALM = "TEST.REALM"

# Local UNIX accounts a role pushes as.  `scripts/sandbox provision` creates
# them; each gets the Kerberos principal <account>/managedtokens@TEST.REALM.
ACCOUNTS = ["mtdune", "mtnova"]

# Destination nodes: the node name is its loopback address, so ping and ssh
# need no /etc/hosts entry.
NODES = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]

# (experiment, role) -> settings, in the order they appear in the product
# configuration.  `override` is the experimentOverride key: the real service
# name then uses it instead of the configuration key.
EXPERIMENTS = [
    {
        "name": "dune",
        "emails": ["dune-ops@sandbox.test"],
        "roles": [
            {"role": "production", "account": "mtdune", "nodes": ["127.0.0.11", "127.0.0.12"]},
            {"role": "analysis", "account": "mtdune", "nodes": ["127.0.0.12"]},
        ],
    },
    {
        "name": "nova",
        "emails": ["nova-ops@sandbox.test", "nova-lead@sandbox.test"],
        "roles": [
            {"role": "production", "account": "mtnova", "nodes": ["127.0.0.12", "127.0.0.13"]},
        ],
    },
    {
        "name": "dune-2",
        "override": "dune",
        "emails": ["dune-ops@sandbox.test"],
        "roles": [
            {
                "role": "production",
                "account": "mtdune",
                "nodes": ["127.0.0.13"],
                "first_credd_override": True,
            },
        ],
    },
]


def principal(account):
    """The Kerberos principal of a role account."""
    return f"{account}/managedtokens@{REALM}"


def credkey(account):
    """htgettoken's credkey: the principal without its realm."""
    return f"{account}/managedtokens"


def services():
    """Yield one dict per configured service (experiment_role)."""
    for exp in EXPERIMENTS:
        issuer = exp.get("override", exp["name"])
        for role in exp["roles"]:
            yield {
                "name": f"{exp['name']}_{role['role']}",
                "real": f"{issuer}_{role['role']}",
                "issuer": issuer,
                "role": role["role"],
                "account": role["account"],
                "nodes": list(role["nodes"]),
                "emails": list(exp["emails"]),
                "first_credd_override": role.get("first_credd_override", False),
            }


def real_services():
    """Distinct real service names with the account that owns them."""
    seen = {}
    for svc in services():
        seen.setdefault(svc["real"], svc)
    return list(seen.values())


if __name__ == "__main__":
    if sys.argv[1:] == ["shell"]:
        print("ACCOUNTS=(" + " ".join(ACCOUNTS) + ")")
        print("NODES=(" + " ".join(NODES) + ")")
        print(f"REALM={REALM}")
    else:
        sys.exit("usage: layout.py shell")
