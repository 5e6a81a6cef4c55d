"""What crosses from Raft into this process is plain data: the codecs that make it so.

Why it exists: PySyncObj pickles its commands, its journal's meta file, large entries sent in pieces and
its full dump, and unpickling is running code. This module holds everything that decodes data coming
from Raft (a peer, the log, the journal, the dump), apart from the network transport that carries it
(node/raft_transport.py) and the handshake that authenticates the peer (node/raft_handshake.py):

  * a no-globals unpickler (protocol 4 on write), installed into PySyncObj's module-level pickle hooks;
    a pickle can then only build None, bool, int, float, str, bytes, tuple, list, dict or set;
  * the msgpack codec of Raft messages (no extension types; a map with a string "type");
  * the full dump in our own format (msgpack of the machine's plain data), through PySyncObj's
    serializer hook, with a size limit checked before decoding.

Anything else raises RaftDataRefused: it was not executed, and the caller logs who sent it.
"""

from __future__ import annotations

import io
import os
import pickle
import threading
from collections.abc import Callable

import msgpack

from node.errors import SynapseError

PICKLE_PROTOCOL = 4

class RaftDataRefused(SynapseError):
    """Data that came from Raft (a peer, the log, the journal, the dump) is not plain data."""

    default_hint = ("a validator or a file sent something other than plain data: it was NOT executed; "
                    "find which validator sent it (the log names it) and check that validator's host")


# --- pickles ---------------------------------------------------------------------------------


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        legacy = (" (this is how PySyncObj's protocol-2 pickles wrote bytes: a journal written before the "
                  "plain-data transport; it cannot be replayed)") if (module, name) == ("_codecs", "encode") else ""
        raise RaftDataRefused(f"a pickle from Raft refers to the global {module}.{name}: refused (Raft carries "
                              f"plain data only; nothing was executed){legacy}")

    def persistent_load(self, pid: object) -> object:
        raise RaftDataRefused("a pickle from Raft uses a persistent id: refused (plain data only)")


def plain_loads(data: bytes | str) -> object:
    """Decode a pickle that may only hold plain data (None, bool, int, float, str, bytes, tuple, list,
    dict, set). Raises RaftDataRefused for anything that refers to a global (every class or function)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        return _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except RaftDataRefused:
        raise
    except Exception as error:  # noqa: BLE001 - any malformed pickle is refused the same way
        raise RaftDataRefused(f"a pickle from Raft is malformed: {type(error).__name__}") from None


def plain_load(file: object) -> object:
    return plain_loads(file.read())


def plain_dumps(obj: object, protocol: object = None) -> bytes:
    return pickle.dumps(obj, PICKLE_PROTOCOL)


def plain_dump(obj: object, file: object, protocol: object = None) -> None:
    file.write(plain_dumps(obj))


_install_lock = threading.Lock()


def install_plain_data_codecs() -> None:
    """Make PySyncObj read its pickles (commands, journal meta, large entries) with the no-globals
    unpickler and write protocol 4. Process-wide and idempotent: PySyncObj calls its module-level
    `pysyncobj.pickle` functions (and journal.py imported two of them by name) with no per-instance hook."""
    import pysyncobj.journal as journal
    import pysyncobj.pickle as pysyncobj_pickle
    import pysyncobj.serializer as serializer
    import pysyncobj.tcp_connection as tcp_connection

    with _install_lock:
        for module in (pysyncobj_pickle,):
            module.loads, module.load, module.dumps, module.dump = plain_loads, plain_load, plain_dumps, plain_dump
        journal.loads, journal.dumps = plain_loads, plain_dumps
        # serializer.py and tcp_connection.py call pysyncobj.pickle.<name> at call time: covered above.
        assert serializer.pickle is pysyncobj_pickle and tcp_connection.pickle is pysyncobj_pickle


def pack_message(message: object) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def refuse_extension(code: int, data: bytes) -> object:
    raise RaftDataRefused(f"a Raft message holds msgpack extension type {code}: refused (plain data only)")


def unpack_message(data: bytes, *, max_bytes: int) -> dict:
    """A PySyncObj message: a map with a string "type". Arrays decode as tuples (as pickle gave them)."""
    try:
        message = msgpack.unpackb(data, use_list=False, raw=False, strict_map_key=True, ext_hook=refuse_extension, timestamp=0)
    except RaftDataRefused:
        raise
    except Exception as error:  # noqa: BLE001 - malformed input from a peer
        raise RaftDataRefused(f"a Raft message is not valid msgpack: {type(error).__name__}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise RaftDataRefused("a Raft message must be a map with a string 'type'")
    return message


# --- the full dump -----------------------------------------------------------------------------------

DUMP_MAGIC = b"SYNAPSE-RAFT-DUMP/1\n"


class PlainDump:
    """PySyncObj's serializer/deserializer hooks (SyncObjConf(serializer=..., deserializer=...)): the
    dump is DUMP_MAGIC + msgpack of the machine's plain data and PySyncObj's two last applied log
    entries. With these hooks PySyncObj stores no state of its own in the dump, so the machine's state
    is read and restored here, on the tick thread, at the moment PySyncObj asks (consistent with the
    entries it passes). A dump a leader sends to a lagging follower is this same file, read by the
    same code: it can hold nothing but plain data."""

    def __init__(self, *, state_to_plain: Callable[[], object], state_from_plain: Callable[[object], None],
                 dump_max_bytes: int) -> None:
        self._state_to_plain = state_to_plain
        self._state_from_plain = state_from_plain
        self._dump_max_bytes = dump_max_bytes

    def serialize(self, file_name: str, data: tuple) -> None:
        applied, before, cluster = data
        body = pack_message({"state": self._state_to_plain(), "applied": list(applied), "before": list(before),
                             "cluster": sorted(getattr(node, "address", str(node)) for node in cluster)})
        with open(file_name, "wb") as file:
            file.write(DUMP_MAGIC + body)
            file.flush()
            os.fsync(file.fileno())

    def deserialize(self, file_name: str) -> tuple:
        with open(file_name, "rb") as file:
            raw = file.read(self._dump_max_bytes + 1)
        if len(raw) > self._dump_max_bytes:
            raise RaftDataRefused(f"the Raft dump {file_name} is over {self._dump_max_bytes} bytes: refused")
        if not raw.startswith(DUMP_MAGIC):
            raise RaftDataRefused(f"the Raft dump {file_name} is not in Synapse's plain format (an old pickled dump, "
                                  "or a file sent by a misbehaving leader): refused, nothing loaded",
                                  hint="move the file away and restart: the validator catches up from the leader")
        try:
            body = msgpack.unpackb(raw[len(DUMP_MAGIC):], raw=False, strict_map_key=True, ext_hook=refuse_extension, timestamp=0)
            applied, before = _entry(body["applied"]), _entry(body["before"])
            cluster = tuple(str(address) for address in body["cluster"])
            state = body["state"]
        except RaftDataRefused:
            raise
        except Exception as error:  # noqa: BLE001 - a malformed file
            raise RaftDataRefused(f"the Raft dump {file_name} is malformed ({type(error).__name__}): refused") from None
        self._state_from_plain(state)
        return applied, before, cluster


def _entry(value: object) -> tuple[bytes, int, int]:
    command, index, term = value
    if not (isinstance(command, bytes) and type(index) is int and type(term) is int):
        raise ValueError("a log entry is (bytes, int, int)")
    return command, index, term
