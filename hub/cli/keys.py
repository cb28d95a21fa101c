"""``edgeloop keys``: the hub signing key, its offline root (certify, revoke) and its rotation.

See docs/security.md, "Root key, certificates, rotation", and docs/operator-guide.md, "Key management".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edgeloop.hub.cli.common import Parents, command, open_hub
from edgeloop.hub.cli.render import emit


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _change(args, change, action: str, target: str) -> dict:
    """``change(home)`` on the hub at ``--home``, audited as ``action`` on ``doc[target]`` with the rest of
    the result as detail."""
    from edgeloop.hub.keys import root_public_path

    with open_hub(args) as hub:
        doc = change(hub.home)
        hub.audit(action, str(doc[target]), **{k: v for k, v in doc.items() if k != target})
        doc["root_public"] = str(root_public_path(hub.home))
    return doc


def cmd_keys_show(args) -> int:
    from edgeloop.hub.keys import root_keyids, root_public_path

    with open_hub(args) as hub:
        if args.public:
            sys.stdout.write(hub.key.public_pem().decode())
            return 0
        doc = hub.key_info()
        roots = root_keyids(hub.home)
        doc["root"] = {"key_id": roots[0], "public": str(root_public_path(hub.home))} if roots else None
    lines = [f"hub key {doc['key_id']}", f"  private {doc['private']} (0600, never leaves this machine)",
             f"  public  {doc['public']} (copy to agents: trusted_keys)"]
    if doc["root"]:
        lines.append(f"root key {doc['root']['key_id']}: public {doc['root']['public']} "
                     "(copy to agents: trusted_roots)")
    emit(args, doc, lines)
    return 0


def cmd_root_init(args) -> int:
    from edgeloop.hub.keys import create_root_key

    key = create_root_key(args.out)
    pub = args.out.with_name(args.out.name.removesuffix(".pem") + ".pub.pem")
    if not pub.exists():
        pub.write_bytes(key.public_pem())
    emit(args, {"key_id": key.keyid, "private": str(args.out), "public": str(pub)}, [
        f"root key {key.keyid} written to {args.out} (0600), its public half to {pub}",
        "Keep the root key OFF this workstation (a USB stick in a safe): it is needed only to certify a hub",
        "key (`edgeloop keys certify --root FILE`) and to revoke one (`edgeloop keys revoke --root FILE KEYID`).",
        "Agents list the public half in trusted_roots."])
    return 0


def cmd_certify(args) -> int:
    from edgeloop.hub.keys import certify, load_root_key

    root = load_root_key(args.root)
    doc = _change(args, lambda home: certify(home, root, args.days), "key.certified", "key_id")
    emit(args, doc, [
        f"hub key {doc['key_id']} certified by root {doc['root']} (serial {doc['serial']}) until "
        f"{_when(doc['not_after'])}; the certificate goes with every command from now on",
        f"agents trust it with trusted_roots = [\"{doc['root_public']}\"] (a copy of that file); "
        "put the root key away again"])
    return 0


def cmd_revoke(args) -> int:
    from edgeloop.hub.keys import load_root_key, revoke

    root = load_root_key(args.root)
    doc = _change(args, lambda home: {"key_id": args.keyid, "reason": args.reason,
                                      **revoke(home, root, args.keyid, args.reason)}, "key.revoked", "key_id")
    current = ["the hub's CURRENT key is revoked: run `edgeloop keys rotate` and `edgeloop keys certify --root "
               "ROOT.pem`, rebuild and redeploy its bundles"] if doc["current_key_revoked"] else []
    emit(args, doc, [f"revocation list {doc['serial']} of root {doc['root']}: {', '.join(doc['revoked'])}",
                     "it goes with every command from now on; an agent keeps the newest list it has seen", *current])
    return 0


def cmd_rotate(args) -> int:
    from edgeloop.hub.keys import rotate

    doc = _change(args, lambda home: rotate(home, args.grace_days), "key.rotated", "old_key_id")
    certify_now = ["this hub has a root: certify the new key now (`edgeloop keys certify --root ROOT.pem`) -- "
                   "agents that trust only the root need it"] if doc["certified"] else []
    emit(args, doc, [f"hub key rotated: {doc['old_key_id']} -> {doc['new_key_id']}; the old key signed the rotation, "
                     f"agents accept it until {_when(doc['grace_until'])}",
                     "restart a running `edgeloop hub serve` so it signs with the new key", *certify_now])
    return 0


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    k = command(sub, "keys", "the hub signing key, its root, rotation").add_subparsers(
        dest="keys_command", required=True, metavar="SUBCOMMAND")
    x = command(k, "show", "show the key id and files (creates the key on first use)", parents=parents.hub)
    x.add_argument("--public", action="store_true", help="print the public key PEM (to provision agents)")
    x.set_defaults(func=cmd_keys_show)

    r = command(k, "root", "the offline root key").add_subparsers(dest="root_command", required=True,
                                                                  metavar="SUBCOMMAND")
    x = command(r, "init", "create an offline root key (never overwrites; keep it off the workstation)",
                parents=(parents.js,))
    x.add_argument("--out", type=Path, required=True, metavar="ROOT.pem", help="where to write the root key")
    x.set_defaults(func=cmd_root_init)

    x = command(k, "certify", "certify the hub's current key with the root key", parents=parents.hub)
    x.add_argument("--root", type=Path, required=True, metavar="ROOT.pem", help="the offline root key")
    x.add_argument("--days", type=float, default=365.0, help="how long the certificate is valid (default 365)")
    x.set_defaults(func=cmd_certify)

    x = command(k, "revoke", "revoke a hub key with the root key (agents refuse it from then on)",
                parents=parents.hub)
    x.add_argument("--root", type=Path, required=True, metavar="ROOT.pem", help="the offline root key")
    x.add_argument("keyid", help="the key id to revoke (16 hex digits)")
    x.add_argument("--reason", default="", help="recorded in the signed list")
    x.set_defaults(func=cmd_revoke)

    x = command(k, "rotate", "replace the hub key; the old key signs the rotation", parents=parents.hub)
    x.add_argument("--grace-days", type=float, default=7.0,
                   help="days agents still accept the old key (default 7)")
    x.set_defaults(func=cmd_rotate)
