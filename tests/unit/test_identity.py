"""Identity: key file creation and permissions, node ids, signing and verifying hostile input."""

import hashlib
import os
import stat

import pytest

from node.errors import ConfigError
from node.identity import Identity, _write_new_key, node_id_for, verify_signature


def test_node_id_is_the_first_16_hex_of_sha256_of_the_public_key():
    identity = Identity.generate()
    assert len(identity.public_key) == 32
    assert identity.node_id == hashlib.sha256(identity.public_key).hexdigest()[:16] == node_id_for(identity.public_key)


def test_sign_and_verify():
    identity = Identity.generate()
    signature = identity.sign(b"message")
    assert len(signature) == 64
    assert verify_signature(identity.public_key, b"message", signature)
    assert not verify_signature(identity.public_key, b"messagE", signature)
    assert not verify_signature(Identity.generate().public_key, b"message", signature)
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_signature(identity.public_key, b"message", tampered)


@pytest.mark.parametrize("public_key,message,signature", [
    (None, b"m", b"s" * 64), (b"k" * 31, b"m", b"s" * 64), (b"k" * 32, b"m", b"s" * 63), (b"k" * 32, "text", b"s" * 64),
    ("k" * 32, b"m", b"s" * 64), (b"\xff" * 32, b"m", b"\xff" * 64), (b"\x00" * 32, b"m", b"\x00" * 64),
])
def test_verify_never_raises_on_garbage(public_key, message, signature):
    assert verify_signature(public_key, message, signature) is False


def test_private_bytes_round_trip():
    identity = Identity.generate()
    again = Identity.from_private_bytes(identity.private_bytes())
    assert again.node_id == identity.node_id and again.sign(b"x") == identity.sign(b"x")  # ed25519 is deterministic
    with pytest.raises(ConfigError):
        Identity.from_private_bytes(b"short")


def test_node_id_for_refuses_a_bad_key():
    with pytest.raises(ConfigError, match="32 raw bytes"):
        node_id_for(b"\x01" * 33)


def test_the_key_file_is_created_0600_once_and_reloaded(tmp_path):
    key_path = tmp_path / "node.key"
    previous_umask = os.umask(0)  # even a permissive umask must not loosen the key file
    try:
        created = Identity.load_or_create(key_path)
    finally:
        os.umask(previous_umask)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes() == created.private_bytes()
    assert Identity.load_or_create(key_path).node_id == created.node_id
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]  # no temporary file left behind


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_a_key_file_others_can_access_is_refused_with_the_fix(tmp_path, mode):
    key_path = tmp_path / "node.key"
    Identity.load_or_create(key_path)
    key_path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        Identity.load_or_create(key_path)
    assert caught.value.hint == f"chmod 600 {key_path}"
    assert f"{mode:04o}" in caught.value.message


def test_a_key_file_of_the_wrong_size_is_refused_and_kept(tmp_path):
    key_path = tmp_path / "node.key"
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(descriptor, b"\x01" * 31)
    os.close(descriptor)
    with pytest.raises(ConfigError, match="31 bytes"):
        Identity.load_or_create(key_path)
    assert key_path.read_bytes() == b"\x01" * 31  # never overwritten: it may be restorable


def test_a_symlinked_key_file_is_refused(tmp_path):
    real = tmp_path / "real.key"
    Identity.load_or_create(real)
    link = tmp_path / "node.key"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="cannot read the key file"):
        Identity.load_or_create(link)


def test_a_directory_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Identity.load_or_create(tmp_path / "missing" / "node.key")


def test_a_key_created_concurrently_is_not_overwritten(tmp_path):
    key_path = tmp_path / "node.key"
    first = Identity.load_or_create(key_path)
    assert _write_new_key(key_path, Identity.generate().private_bytes()) is False
    assert Identity.load_or_create(key_path).node_id == first.node_id
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]
