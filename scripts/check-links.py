#!/usr/bin/env python3
"""Checks every link of the built book (scripts/book runs it after `mdbook build docs`).

Usage: scripts/check-links.py [BOOK_DIR]   (default: docs/book)

- An internal link (to another page of the book, an image, a stylesheet, or an `#anchor`
  on the same page) must name a file that exists in the built book and, with a `#fragment`,
  an element of that page with that `id`.
- A repository link (the book's `git-repository-url` followed by `/blob/<branch>/PATH` or
  `/tree/<branch>/PATH`: how the book points at files outside it, like bench/README.md or
  an example) must name a file or folder that exists in this work tree.
- Any other http(s) link is external: it is not fetched (there may be no network), only
  counted, and its hosts listed.
- A relative link that leaves the book (`../../bench/README.md`) is an error: the built
  book is published without the repository around it, so write a repository link instead.

Exits 1 and lists every broken link; prints what it checked either way. Python's standard
library only.
"""

import sys
import tomllib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent


class Page(HTMLParser):
    """The ids an HTML page defines and the links it makes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.links = []  # (tag, attribute, value)

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            if (name == "href" and tag in ("a", "link", "area")) or (
                name == "src" and tag in ("img", "script", "iframe", "source")
            ):
                self.links.append((tag, name, value))


def repository_url(book_dir: Path) -> str:
    """The book's `git-repository-url` (docs/book.toml), without a trailing slash."""
    config = tomllib.loads((book_dir.parent / "book.toml").read_text())
    return config["output"]["html"]["git-repository-url"].rstrip("/")


def main() -> int:
    book = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT / "docs" / "book"
    if not (book / "index.html").is_file():
        print(f"check-links: no built book at {book} (run `mdbook build docs` first)", file=sys.stderr)
        return 1
    repository = repository_url(book)
    pages = {}
    for path in sorted(book.rglob("*.html")):
        parsed = Page()
        parsed.feed(path.read_text(encoding="utf-8"))
        pages[path] = parsed

    broken = []
    internal = anchored = repo_links = 0
    external = Counter()
    for path, page in pages.items():
        where = path.relative_to(book)
        for tag, attribute, link in page.links:
            parts = urlsplit(link)
            if parts.scheme in ("mailto", "javascript", "data"):
                continue
            if parts.scheme in ("http", "https"):
                if link.startswith(repository + "/"):
                    repo_links += 1
                    rest = link[len(repository) + 1 :].split("#")[0]
                    kind, _, tail = rest.partition("/")
                    _, _, file = tail.partition("/")  # after the branch
                    if kind not in ("blob", "tree") or not file:
                        broken.append(f"{where}: {link}: a repository link is {repository}/blob/BRANCH/PATH")
                    elif not (ROOT / unquote(file)).exists():
                        broken.append(f"{where}: {link}: no {file} in the repository")
                elif link.rstrip("/") != repository:
                    external[parts.netloc] += 1
                continue
            if parts.scheme or parts.netloc:
                broken.append(f"{where}: {link}: an unexpected kind of link")
                continue
            internal += 1
            if parts.path:
                target = (path.parent / unquote(parts.path)).resolve()
                if book not in target.parents and target != book:
                    broken.append(
                        f"{where}: {link}: leaves the book; link to {repository}/blob/main/PATH instead"
                    )
                    continue
                if target.is_dir():
                    target = target / "index.html"
                if not target.is_file():
                    broken.append(f"{where}: {link}: no such file in the book")
                    continue
            else:
                target = path
            if parts.fragment:
                anchored += 1
                ids = pages[target].ids if target in pages else set()
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where}: {link}: no id {parts.fragment!r} in {target.relative_to(book)}")

    hosts = ", ".join(f"{host} ({n})" for host, n in sorted(external.items())) or "none"
    print(
        f"check-links: {len(pages)} pages; {internal} internal links ({anchored} to an anchor) "
        f"and {repo_links} repository links checked; {sum(external.values())} external links "
        f"not fetched: {hosts}"
    )
    if broken:
        print(f"check-links: {len(broken)} broken:", file=sys.stderr)
        for line in broken:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
