"""Print the headers that sign one request, for curl: ``python -m service.sign POST URL --data-file body.json``.

    eval "curl -X POST https://ledger.example/v1/transfers --data-binary @body.json \\
        $(python -m service.sign POST https://ledger.example/v1/transfers \\
              --key-id hk-alphapay --key-file hk-alphapay.key --data-file body.json)"

The output is shell-quoted ``-H`` arguments, hence ``eval`` (without it the quotes reach curl as text); use
them within 300 s (the signature's ``created`` window).
The body must be sent byte for byte as signed, hence ``--data-binary`` (``-d`` would strip newlines).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ledger.keys import read_signing_key
from service.client import signed_curl_headers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.sign", description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("url", help="the URL exactly as curl will send it (path and encoded query)")
    parser.add_argument("--key-id", required=True, help="the institution id the key is registered as")
    parser.add_argument("--key-file", required=True, type=Path, help="base64 Ed25519 seed, as `ledger init` writes")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--data", help="the request body, as text")
    body.add_argument("--data-file", type=Path, help="a file holding the request body")
    args = parser.parse_args(argv)
    try:
        signing_key = read_signing_key(args.key_file)
    except (OSError, ValueError) as error:
        print(f"cannot read the signing key {args.key_file}: {error}", file=sys.stderr)
        return 2
    content = args.data_file.read_bytes() if args.data_file else (args.data.encode() if args.data else None)
    print(" ".join(signed_curl_headers(args.method, args.url, content, key_id=args.key_id, signing_key=signing_key)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
