"""The node template imports what nodes would otherwise import on their own after the fork.

Why it matters: a module imported by the template is one copy shared by every node forked from it; one
a node imports later is a private copy in each node that needs it. Three were found that way (sys.modules
of running nodes against the template's): a validator's first X25519 key (the Raft handshake) imports
cryptography's OpenSSL backend and, with it, its RSA and EC modules (~1 MB per validator); the event
loop's first run_in_executor imports concurrent.futures.thread; aiohttp's first connect to a host name
imports the IDNA codec. Each is triggered here, in a fresh interpreter that imported what the template
imports, and must import nothing new.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]

LAZY_IMPORTS = textwrap.dedent("""
    import json, sys
    import node.forkserver                      # the template's imports, nothing run
    before = set(sys.modules)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    X25519PrivateKey.generate()                 # node/raft_handshake.py, once per validator session
    import concurrent.futures
    concurrent.futures.ThreadPoolExecutor(1).submit(int).result()    # asyncio's default executor
    "node-1.example".encode("idna")             # aiohttp/yarl, a host name
    print(json.dumps(sorted(set(sys.modules) - before)))
""")


def run_script(script: str) -> list[str]:
    """The last line the script prints, as JSON."""
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True, timeout=120,
                               check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_what_a_node_imports_lazily_is_already_imported_by_the_template():
    assert run_script(LAZY_IMPORTS) == []


def test_the_check_sees_a_module_the_template_did_not_import():
    script = LAZY_IMPORTS.replace('print(json.dumps', 'import xml.dom.minidom\nprint(json.dumps')
    assert "xml.dom.minidom" in run_script(script)


FORKED_KEYS = textwrap.dedent("""
    import json, os
    import node.forkserver
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    X25519PrivateKey.generate()                 # the parent's OpenSSL random generator in use before the forks
    read_end, write_end = os.pipe()
    for _ in range(3):
        if os.fork() == 0:
            key = X25519PrivateKey.generate().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                            serialization.NoEncryption())
            os.write(write_end, key.hex().encode() + b"\\n")
            os._exit(0)
    for _ in range(3):
        os.wait()
    os.close(write_end)
    print(json.dumps(os.read(read_end, 4096).decode().split()))
""")


def test_nodes_forked_after_the_openssl_backend_is_loaded_still_draw_keys_of_their_own():
    """The backend the template now loads must not hand its children one random state: three forked
    children's X25519 session keys differ (OpenSSL reseeds after a fork)."""
    keys = run_script(FORKED_KEYS)
    assert len(keys) == 3 and len(set(keys)) == 3
