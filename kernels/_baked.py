"""Start from a cache that was compiled elsewhere (at image build time) and is read-only.

Numba ignores a cache directory it cannot write to (and import fails without a writable
one), so a baked cache cannot be ``NUMBA_CACHE_DIR`` itself in a read-only container. Instead
``NUMBA_CACHE_DIR`` is a writable place (a tmpfs) that mirrors the baked tree with one
symbolic link per file: Numba reads the baked files through the links, and whatever it
writes (a signature that was not baked) replaces a link with a real file in the tmpfs,
leaving the baked tree untouched. Links cost no copying: the data stays in the image.

The baked tree holds one folder per CPU target (``<baked>/x86-64-v3/...``), each compiled
on its own so they could be built in parallel; only the chosen target's folder is linked.
"""

from __future__ import annotations

import fcntl
import os


def link_tree(src: str, dst: str) -> int:
    """Mirror ``src`` into ``dst`` by symlinks to its files; keeps what ``dst`` already has.
    Returns how many links were made. Safe when several processes do it at once."""
    made = 0
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, ".lossd-link.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # workers starting together: one links, the others wait
        for root, _dirs, files in os.walk(src):
            rel = os.path.relpath(root, src)
            out = dst if rel == "." else os.path.join(dst, rel)
            os.makedirs(out, exist_ok=True)
            for name in files:
                target = os.path.join(out, name)
                if not os.path.lexists(target):
                    os.symlink(os.path.join(root, name), target)
                    made += 1
    return made


def seed(baked_root: str | None, cpu_name: str | None, cache_dir: str) -> str | None:
    """Link ``<baked_root>/<cpu_name>`` into ``cache_dir`` when it exists; returns the folder
    linked, or None (host-tuned code, or no cache baked for that target)."""
    if not baked_root or not cpu_name:
        return None
    src = os.path.join(baked_root, cpu_name)
    if not os.path.isdir(src):
        return None
    link_tree(src, cache_dir)
    return src
