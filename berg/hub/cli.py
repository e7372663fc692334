"""``berg publish`` and ``berg registry add|list|remove|update|prefer``: the sub-commands, for ``berg.cli``.

Handlers write their report to the stream they are given (stdout by default); the functions they call
(:mod:`berg.hub.publishing`, :mod:`berg.hub.registries`) only return data.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

__all__ = ["add_publish_subparser", "add_registry_subparser", "cmd_publish", "cmd_registry"]


def cmd_publish(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``berg publish ID --to URL``."""
    from berg.api import BERG
    from berg.hub.publishing import publish

    out = out or sys.stdout
    client = BERG(
        berg_dir=getattr(args, "berg_dir", None),
        cache_dir=getattr(args, "cache_dir", None),
        offline=bool(getattr(args, "offline", False)),
        registry=getattr(args, "registry", None),
    )
    result = publish(
        args.model_id,
        args.to,
        client=client,
        namespace=args.namespace,
        name=args.name,
        version=args.version,
        artifact=args.artifact,
        endpoint=args.endpoint,
    )
    verb = "published" if result["uploaded"] else "already published (nothing to upload)"
    endpoint = f" --endpoint {result['endpoint']}" if result.get("endpoint") else ""
    out.write(
        f"{verb}: {result['model']}  ({result['uploaded']} file(s) uploaded, {result['skipped']} already there)\n"
        f"  registry: {result['url']}\n"
        f"  sha256:   {result['sha256']}\n"
        f"others load it with:\n"
        f"  berg registry add NAME {result['url']} --sha256 {result['sha256']}{endpoint}\n"
        f'  berg.BERG().get_encoding_model("{result["model"].split("@")[0]}", subject=...)\n'
    )
    return 0


def cmd_registry(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``berg registry add|list|remove|update|prefer``."""
    from berg.hub import registries as hub

    out = out or sys.stdout
    if args.action == "add":
        r = hub.add_registry(args.name, args.url, sha256=args.sha256, endpoint=args.endpoint)
        out.write(
            f"added {r['name']} (namespace {r['namespace']}, sha256 {r['sha256']}): {len(r['models'])} model(s)\n"
        )
        for m in r["models"]:
            out.write(f"  + {m}\n")
    elif args.action == "update":
        r = hub.update_registry(args.name)
        if not r["changed"]:
            out.write(f"{r['name']} is up to date (sha256 {r['sha256']})\n")
        else:
            out.write(f"updated {r['name']}: sha256 {r['old_sha256']} -> {r['sha256']}\n")
            for m in r["added"]:
                out.write(f"  + {m}\n")
            for m in r["removed"]:
                out.write(f"  - {m}\n")
            if not r["added"] and not r["removed"]:
                out.write("  (same ids; entries changed)\n")
    elif args.action == "remove":
        r = hub.remove_registry(args.name)
        out.write(f"removed {r['name']} ({r.get('url')}); its cached artifacts stay until `berg cache clear`\n")
    elif args.action == "prefer":
        hub.prefer_registry(args.target, args.name)
        out.write(f"{args.target}: registry {args.name} wins\n")
    else:
        rows = hub.list_registries()
        if getattr(args, "json", False):
            out.write(json.dumps(rows, indent=1, default=str) + "\n")
            return 0
        for r in rows:
            ns = r.get("namespace")
            pins = f"  prefer: {', '.join(r['preferred_for'])}" if r.get("preferred_for") else ""
            sha = f"  sha256 {r['sha256'][:16]}" if r.get("sha256") else ""
            ns_text = "(default)" if ns == "" else (ns or "(declared in its file)")
            out.write(f"{r['name']:20s} {ns_text:12s} {r['url']}{sha}{pins}\n")
    return 0


def add_publish_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``publish`` to an argparse sub-parsers object and return its parser."""
    p = subparsers.add_parser(
        "publish",
        help="publish a built or trained model so others load it by name",
        description="Upload a model's verified artifact, its card and a registry fragment (written last, "
        "pinning the manifest's sha256) to an S3(-compatible) prefix or a local folder. Resumable: run it "
        "again after an interruption. A published version is never replaced by a different artifact.",
        epilog="example: berg --registry out/registry.yaml publish my-model --to s3://lab-models/berg/ "
        "--namespace lab   (then: berg registry add lab s3://lab-models/berg/)",
    )
    p.add_argument("model_id", metavar="ID", help="the model (use the global --registry for your own files)")
    p.add_argument("--to", required=True, metavar="URL", help="s3://BUCKET/PREFIX/ or a local folder")
    p.add_argument("--namespace", metavar="NS", help="namespace of the registry there (required the first time)")
    p.add_argument("--name", metavar="ID", help="published id (default: the model's id)")
    p.add_argument("--version", type=int, metavar="N", help="version number (default: next, or the one it has)")
    p.add_argument("--artifact", metavar="DIR", help="the artifact folder, if berg cannot find it")
    p.add_argument("--endpoint", metavar="URL", help="S3 endpoint for servers not on AWS (or BERG_S3_ENDPOINT)")
    p.set_defaults(func=cmd_publish)
    return p


def add_registry_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``registry`` (add/list/remove/update/prefer) to an argparse sub-parsers object."""
    p = subparsers.add_parser(
        "registry",
        help="add, list, update or remove registries of other labs",
        description="Registries from outside, kept in your config and pinned by sha256. Their models are "
        "named NAMESPACE/ID (the newest version; NAMESPACE/ID@N for another).",
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = sub.add_parser("add", help="add a registry by URL (s3://, https://, or a folder)")
    a.add_argument("name", metavar="NAME", help="your name for it (lowercase, digits, '_', '-')")
    a.add_argument("url", metavar="URL", help="its folder or registry.yaml: s3://BUCKET/PREFIX/, https://..., DIR")
    a.add_argument("--sha256", metavar="HASH", help="the fragment's sha256, as its publisher gave it")
    a.add_argument("--endpoint", metavar="URL", help="S3 endpoint for servers not on AWS (or BERG_S3_ENDPOINT)")
    ls = sub.add_parser("list", help="list the registries berg reads")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    r = sub.add_parser("remove", help="forget a registry added by URL")
    r.add_argument("name", metavar="NAME")
    u = sub.add_parser("update", help="fetch a registry again, show the ids added/removed and pin it")
    u.add_argument("name", metavar="NAME")
    w = sub.add_parser("prefer", help="pin which registry wins where two define the same id")
    w.add_argument("target", metavar="NAMESPACE_OR_ID", help="'lab' (a namespace) or 'lab/model-id'")
    w.add_argument("name", metavar="NAME", help="the registry that wins")
    p.set_defaults(func=cmd_registry)
    return p
