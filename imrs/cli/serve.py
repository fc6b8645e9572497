"""``imrs serve``: the HTTP API (``imrs.api``) on uvicorn, and ``imrs serve keys`` to manage its keys.

Without an API key the server listens on loopback only: anything else could let every machine on
the network grow, prune or reload the collection."""

from __future__ import annotations

import argparse
import ipaddress
import json
from typing import Any

from ..errors import IMRSError
from .common import collection_args, int_in, open_collection, runtime_arg, settings_from


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    if getattr(args, "keys_action", None):
        return cmd_keys(args)
    try:
        import uvicorn

        from ..api.app import ServeConfig, create_app
        from ..api.keys import KeyStore
    except ImportError as exc:
        raise IMRSError(f"the API needs its extra: pip install 'imrs[api]' ({exc.name} is missing)") from None
    s = settings_from(args)
    if not is_loopback(args.host) and not KeyStore(s.home).configured():
        raise IMRSError(f"refusing to listen on {args.host} without an API key: create one with "
                        "`imrs serve keys add NAME --scope write`, or serve on 127.0.0.1")
    coll = open_collection(args, settings=s)
    config = ServeConfig(root=str(coll.root), backbone=coll.backbone, indexer=coll.indexer, home=str(s.home),
                         device=coll.device, weights=coll.weights, checkpoint=coll.checkpoint, runtime=coll.runtime,
                         index_params=dict(coll.index_params), max_upload_bytes=args.max_upload_mb << 20,
                         rate_per_minute=args.rate, request_timeout=float(args.timeout), access_log=not args.quiet)
    print(f"imrs: serving {coll.root} on http://{args.host}:{args.port} (docs: /docs, {args.workers} worker(s))",
          flush=True)
    common: dict[str, Any] = {"host": args.host, "port": args.port, "access_log": False,
                              "log_level": "debug" if args.debug else "warning", "timeout_graceful_shutdown": 5}
    if args.workers == 1:
        uvicorn.run(create_app(config, coll), **common)
    else:
        coll = None  # each worker opens its own
        from ..config import hand_serve_config

        hand_serve_config(config.to_json())
        uvicorn.run("imrs.api.app:app_from_env", factory=True, workers=args.workers, **common)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from ..api.keys import KeyStore

    args.home = getattr(args, "keys_home", None) or args.home
    store = KeyStore(settings_from(args).home)
    if args.keys_action == "add":
        scopes = ("read", "write") if args.scope == "write" else ("read",)
        key = store.add(args.name, scopes, args.rate)
        print(key)
        print(f"imrs: key for {args.name!r} ({'+'.join(scopes)}) stored hashed in {store.path}; it is shown only "
              "this once", flush=True)
    elif args.keys_action == "list":
        keys = store.list()
        if args.json:
            print(json.dumps([k.as_dict() for k in keys], indent=2))
            return 0
        if not keys:
            print("no API keys: the server answers anyone on loopback, and listens nowhere else")
        for k in keys:
            rate = f"{k.rate_per_minute}/min" if k.rate_per_minute is not None else "server's rate"
            print(f"{k.id}  {'+'.join(k.scopes):<10}  {rate:<14}  {k.name}")
    else:
        n = store.revoke(args.key)
        print(f"revoked {n} key(s); running servers refuse it from their next request")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the HTTP API (search, verdicts, growth jobs, snapshots)",
                       description="FastAPI on uvicorn: /v1 endpoints, OpenAPI at /openapi.json, docs at /docs, "
                                   "Prometheus metrics at /metrics. Without API keys it listens on loopback only.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int_in(0, 65535, "--port"), default=8000)
    p.add_argument("--workers", type=int_in(1, 64, "--workers"), default=1,
                   help="server processes; each loads the index and reloads it after another's write")
    p.add_argument("--rate", type=int_in(0, 10_000_000, "--rate"), default=600,
                   help="requests a minute per API key (per client address without keys); 0: no limit")
    p.add_argument("--max-upload-mb", type=int_in(1, 256, "--max-upload-mb"), default=16,
                   help="largest uploaded query image")
    p.add_argument("--timeout", type=int_in(1, 3600, "--timeout"), default=30, help="request timeout in seconds")
    p.add_argument("-q", "--quiet", action="store_true", help="no access log lines")
    collection_args(p)
    runtime_arg(p)
    keys = p.add_subparsers(dest="serve_command", metavar="{keys}")
    k = keys.add_parser("keys", help="API keys: add, list, revoke")
    actions = k.add_subparsers(dest="keys_action", required=True)
    a = actions.add_parser("add", help="create a key (printed once; stored hashed)")
    a.add_argument("name", help="who or what uses the key")
    a.add_argument("--scope", choices=["read", "write"], default="read",
                   help="read: search and look; write: also grow, prune, index, snapshots")
    a.add_argument("--rate", type=int_in(0, 10_000_000, "--rate"), default=None,
                   help="this key's requests a minute (default: the server's --rate; 0: no limit)")
    a.add_argument("--home", dest="keys_home", help="state folder (default: $IMRS_HOME or ./runs)")
    a = actions.add_parser("list", help="list keys (never their secrets)")
    a.add_argument("--json", action="store_true")
    a.add_argument("--home", dest="keys_home", help="state folder (default: $IMRS_HOME or ./runs)")
    a = actions.add_parser("revoke", help="revoke a key by id or name")
    a.add_argument("key", help="key id (see list) or name")
    a.add_argument("--home", dest="keys_home", help="state folder (default: $IMRS_HOME or ./runs)")
    p.set_defaults(func=cmd_serve)

