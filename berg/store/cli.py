"""``berg cache list|size|verify|clear [ID]``: the sub-command, for ``berg.cli`` to attach.

The handler writes its report to the stream it is given (stdout by default); the functions it calls
(:mod:`berg.store.cache`) only return data.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

__all__ = ["add_cache_subparser", "cmd_cache"]


def cmd_cache(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one cache action; exit status 1 when ``verify`` found corrupt files."""
    from berg.store import Store
    from berg.store.cache import cache_clear, cache_list, cache_size, cache_verify

    out = out or sys.stdout
    root = Store(cache_dir=getattr(args, "cache_dir", None)).cache_dir
    model_id = args.model_id
    if args.action == "list":
        for e in cache_list(root, model_id):
            out.write(f"{e['model_id']}/{e['key']}  {e['size']:,} B\n")
    elif args.action == "size":
        sizes = cache_size(root, model_id)
        for mid, size in sizes.items():
            out.write(f"{mid:32s} {size / 1e6:10.1f} MB\n")
        out.write(f"{'total':32s} {sum(sizes.values()) / 1e6:10.1f} MB  ({root})\n")
    elif args.action == "verify":
        results = cache_verify(root, model_id)
        bad = [r for r in results if r["status"] == "corrupt"]
        for r in bad:
            again = "derived again" if r["kind"] == "derived" else "fetched again"
            what = f"deleted; {again} on next use" if r.get("deleted") else "NOT deleted: the cache is not writable"
            out.write(f"corrupt {r['kind']} file ({what}): {r['model_id']}/{r['key']}\n")
        for r in results:
            if r["status"] == "unrecorded":
                out.write(f"unrecorded (no checksum to compare with): {r['model_id']}/{r['key']}\n")
        kinds = {k: sum(1 for r in results if r["kind"] == k) for k in ("manifest", "downloaded", "derived")}
        n_unrec = sum(1 for r in results if r["status"] == "unrecorded")
        out.write(
            f"verified {len(results)} file(s) ({kinds['manifest']} from manifests, {kinds['downloaded']} "
            f"downloaded, {kinds['derived']} derived): {len(bad)} corrupt, {n_unrec} unrecorded\n"
        )
        return 1 if bad else 0
    else:
        freed = cache_clear(root, model_id)
        out.write(f"freed {freed / 1e6:.1f} MB from {root}\n")
    return 0


def add_cache_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cache`` to an argparse sub-parsers object and return its parser."""
    p = subparsers.add_parser(
        "cache",
        help="inspect, verify or clear the artifact cache",
        description="Inspect, verify or clear berg's artifact cache "
        "($BERG_CACHE or the user cache directory; --cache-dir overrides).",
    )
    p.add_argument("action", choices=["list", "size", "verify", "clear"])
    p.add_argument("model_id", nargs="?", help="limit to one model")
    p.set_defaults(func=cmd_cache)
    return p
