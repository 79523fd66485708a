#!/usr/bin/env python3
"""Fails when nginx, with the given config, would pass an operator-only path to the service.

nginx picks a request's location the documented way (https://nginx.org/en/docs/http/ngx_http_core_module.html#location):
an exact `=` match wins; otherwise the longest prefix, which wins outright when marked `^~`; otherwise the
first regular expression (`~`, `~*`) that matches, in file order; otherwise that longest prefix. This script
parses the config, applies that rule to each operator path in every `server`, and requires the chosen
location to refuse (`deny all` or `return 4xx`). nginx decodes and merges slashes before matching, so the
normalised paths below stand for their encoded and doubled-slash spellings too.

    check-nginx-routes.py deploy/nginx.conf
    check-nginx-routes.py --self-test          proves the check fails on a config that proxies /metrics
"""

import re
import sys

OPERATOR_PATHS = ["/metrics", "/metrics/", "/metrics/anything"]


def tokens(text):
    """nginx's tokens: words, quoted strings, `{`, `}` and `;`, without comments."""
    pattern = re.compile(r"""\s+|#[^\n]*|"((?:\\.|[^"\\])*)"|'((?:\\.|[^'\\])*)'|([{};])|([^\s{};"'#]+)""")
    position = 0
    while position < len(text):
        match = pattern.match(text, position)
        if not match:
            raise SystemExit(f"check-nginx-routes: cannot parse near: {text[position:position + 40]!r}")
        position = match.end()
        double, single, punct, word = match.groups()
        if punct is not None:
            yield punct
        elif word is not None:
            yield word
        elif double is not None or single is not None:
            yield double if double is not None else single


def parse(stream):
    """A list of (name, args, block-or-None) directives, until `}` or the end."""
    directives = []
    current = []
    for token in stream:
        if token == ";":
            directives.append((current[0], current[1:], None))
            current = []
        elif token == "{":
            directives.append((current[0], current[1:], parse(stream)))
            current = []
        elif token == "}":
            return directives
        else:
            current.append(token)
    if current:
        raise SystemExit("check-nginx-routes: unterminated directive at the end of the file")
    return directives


def blocks(directives, name):
    for directive, args, block in directives:
        if directive == name and block is not None:
            yield args, block


def choose_location(locations, path):
    """The location nginx would pick for `path`, as (args, block), or None."""
    best_prefix = None
    regexes = []
    for args, block in locations:
        if len(args) == 2 and args[0] == "=":
            if path == args[1]:
                return args, block
        elif len(args) == 2 and args[0] in ("~", "~*"):
            regexes.append((args, block))
        else:
            prefix = args[1] if len(args) == 2 and args[0] == "^~" else args[0]
            if path.startswith(prefix) and (best_prefix is None or len(prefix) > len(best_prefix[0])):
                best_prefix = (prefix, args, block)
    if best_prefix is not None and best_prefix[1][0] == "^~":
        return best_prefix[1], best_prefix[2]
    for args, block in regexes:
        flags = re.IGNORECASE if args[0] == "~*" else 0
        if re.search(args[1], path, flags):
            return args, block
    return (best_prefix[1], best_prefix[2]) if best_prefix is not None else None


def refuses(block):
    for directive, args, _ in block:
        if directive == "deny" and args == ["all"]:
            return True
        if directive == "return" and args and re.fullmatch(r"4\d\d", args[0]):
            return True
    return False


def problems(config_text):
    found = []
    tree = parse(iter(list(tokens(config_text))))
    servers = [server for _, http in blocks(tree, "http") for _, server in blocks(http, "server")]
    if not servers:
        found.append("no http { server { … } } block found")
    for number, server in enumerate(servers, 1):
        locations = list(blocks(server, "location"))
        for path in OPERATOR_PATHS:
            chosen = choose_location(locations, path)
            if chosen is None:
                continue  # no location: nginx serves its own files, nothing reaches the service
            args, block = chosen
            if any(directive == "location" for directive, _, _ in block):
                found.append(f"server {number}: {path} lands in `location {' '.join(args)}`, which has "
                             "nested locations; this check does not follow them")
            elif not refuses(block):
                found.append(f"server {number}: {path} is routed by `location {' '.join(args)}` "
                             "(it neither denies all nor returns 4xx)")
    return found


SELF_TESTS = [
    ("proxies everything", "http { server { location / { proxy_pass http://up; } } }", False),
    ("a plain prefix loses to a regex", "http { server { location /metrics { deny all; } "
     "location ~ ^/ { proxy_pass http://up; } location / { proxy_pass http://up; } } }", False),
    ("only the exact path is denied", "http { server { location = /metrics { deny all; } "
     "location / { proxy_pass http://up; } } }", False),
    ("^~ wins over regexes", "http { server { location ^~ /metrics { deny all; } "
     "location ~ ^/ { proxy_pass http://up; } location / { proxy_pass http://up; } } }", True),
    ("return 404", "http { server { location ^~ /metrics { return 404; } "
     "location / { proxy_pass http://up; } } }", True),
]


def main(argv):
    if argv == ["--self-test"]:
        for name, config, safe in SELF_TESTS:
            if (not problems(config)) != safe:
                print(f"check-nginx-routes: self-test failed: {name}", file=sys.stderr)
                return 1
        print("check-nginx-routes: self-test passed")
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as config:
        found = problems(config.read())
    for problem in found:
        print(f"check-nginx-routes: {argv[0]}: {problem}", file=sys.stderr)
    if found:
        return 1
    print(f"check-nginx-routes: {argv[0]}: {', '.join(OPERATOR_PATHS)} are refused")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
