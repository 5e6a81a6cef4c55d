"""Where a URL's authority (`user:password@host:port`) lies, found by hand rather than by a URL parser.

Why by hand: parsers disagree on odd URLs (a backslash is a path separator to browsers and part of the
authority to RFC 3986 parsers), and the two users of this, refusing credentials in package URLs and
redacting them from logs, must work on malformed URLs too and err on the wide side. So the authority
runs from '://' to the first '/', '?' or '#', whatever lies between: an '@' that any parser could read
as ending a user part is inside it.
"""

from __future__ import annotations


def authority_span(url: str) -> tuple[int, int] | None:
    """(start, end) of the authority in `url`, or None when it has no '://'."""
    marker = url.find("://")
    if marker < 0:
        return None
    start, end = marker + 3, len(url)
    for delimiter in "/?#":
        position = url.find(delimiter, start)
        if position >= 0:
            end = min(end, position)
    return start, end


def has_userinfo(url: str) -> bool:
    """True when `url` may name credentials (`scheme://user[:password]@host`): any '@' in its authority."""
    span = authority_span(url)
    return span is not None and "@" in url[span[0]:span[1]]
