#!/usr/bin/env python
# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Download one source distribution from the package index pip is configured with.

Used by tools/install.sh for ``pb1-detectron2==0.6``: ``pip download`` refuses that sdist because
its metadata declares a direct-URL extra (``panopticapi @ https://...``), although the file itself
is fine. This helper reads pip's own index configuration (``PIP_INDEX_URL`` or ``pip config``,
else pip's default index), finds the exact file name in the index's simple page, downloads it and
checks its sha256 against the pinned value.

Usage: fetch_sdist.py PROJECT FILENAME SHA256 DEST_DIR
"""

import hashlib
import html.parser
import os
import subprocess
import sys
import urllib.parse
import urllib.request


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def _index_urls():
    urls = []
    env = os.environ.get("PIP_INDEX_URL")
    if env:
        urls.append(env)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key.endswith(".index-url"):
                urls.append(value.strip().strip("'\""))
    except OSError:
        pass
    from pip._internal.models.index import PyPI

    urls.append(PyPI.simple_url)
    return [u for u in dict.fromkeys(urls) if u.startswith(("http://", "https://"))]


def fetch(project: str, filename: str, sha256: str, dest: str) -> str:
    errors = []
    for index in _index_urls():
        page = urllib.parse.urljoin(index.rstrip("/") + "/", project + "/")
        try:
            with urllib.request.urlopen(page, timeout=60) as r:
                parser = _Links()
                parser.feed(r.read().decode("utf-8", "replace"))
        except OSError as e:
            errors.append(f"{page}: {e}")
            continue
        for href in parser.hrefs:
            url = urllib.parse.urljoin(page, href)
            if os.path.basename(urllib.parse.urlparse(url).path) != filename:
                continue
            with urllib.request.urlopen(url.split("#")[0], timeout=300) as r:
                data = r.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest != sha256:
                sys.exit(f"fetch_sdist: {filename} has sha256 {digest}, expected {sha256}")
            os.makedirs(dest, exist_ok=True)
            path = os.path.join(dest, filename)
            with open(path, "wb") as f:
                f.write(data)
            return path
        errors.append(f"{page}: no file named {filename}")
    sys.exit("fetch_sdist: could not fetch " + filename + ":\n  " + "\n  ".join(errors))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    print(fetch(*sys.argv[1:]))
