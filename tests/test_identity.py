from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import textwrap

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from p2p.identity import (
    DataDirLocked,
    IdentityError,
    NodeIdentity,
    lock_data_dir,
    load_incarnation,
    next_incarnation,
    node_id_from_public_key,
    save_incarnation,
    verify,
)


def test_create_then_reload_same_identity(tmp_path) -> None:
    data_dir = tmp_path / "nested" / "data"
    first = NodeIdentity.load_or_create(data_dir)
    key_file = data_dir / "identity.key"
    assert key_file.exists()
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    second = NodeIdentity.load_or_create(data_dir)
    assert second.node_id == first.node_id
    assert second.public_key == first.public_key
    assert [p.name for p in data_dir.iterdir()] == ["identity.key"]


def test_node_id_is_blake2b_of_public_key(tmp_path) -> None:
    ident = NodeIdentity.load_or_create(tmp_path)
    assert len(ident.public_key) == 32
    assert ident.node_id == hashlib.blake2b(ident.public_key, digest_size=8).hexdigest()
    assert len(ident.node_id) == 16
    assert node_id_from_public_key(ident.public_key) == ident.node_id


def test_sign_and_verify() -> None:
    ident = NodeIdentity.generate()
    sig = ident.sign(b"alive inc=3")
    assert len(sig) == 64
    assert verify(ident.node_id, ident.public_key, b"alive inc=3", sig)
    assert not verify(ident.node_id, ident.public_key, b"alive inc=4", sig)
    other = NodeIdentity.generate()
    # Someone else's key cannot speak for this node id, even with a valid signature.
    assert not verify(ident.node_id, other.public_key, b"alive inc=3", other.sign(b"alive inc=3"))
    # Nor can a valid signature be attributed to a different node id.
    assert not verify(other.node_id, ident.public_key, b"alive inc=3", sig)


@given(
    node_id=st.one_of(st.text(max_size=20), st.none(), st.integers()),
    public_key=st.one_of(st.binary(max_size=40), st.none(), st.text(max_size=5)),
    payload=st.one_of(st.binary(max_size=40), st.none()),
    signature=st.one_of(st.binary(max_size=70), st.binary(min_size=64, max_size=64), st.none()),
)
def test_verify_never_raises(node_id, public_key, payload, signature) -> None:
    assert verify(node_id, public_key, payload, signature) in (True, False)


def test_verify_rejects_non_point_public_key() -> None:
    # 32 bytes that are not a valid curve point, with a matching node id.
    pk = b"\xff" * 32
    assert not verify(node_id_from_public_key(pk), pk, b"x", b"\x00" * 64)


def test_raw_32_byte_key_accepted(tmp_path) -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    (tmp_path / "identity.key").write_bytes(raw)
    os.chmod(tmp_path / "identity.key", 0o600)
    assert NodeIdentity.load_or_create(tmp_path).node_id == NodeIdentity.from_private_key(key).node_id


@pytest.mark.parametrize("content", [b"garbage", b"", b"x" * 10000])
def test_corrupt_key_file_is_an_error_not_replaced(tmp_path, content: bytes) -> None:
    (tmp_path / "identity.key").write_bytes(content)
    with pytest.raises(IdentityError, match="identity key"):
        NodeIdentity.load_or_create(tmp_path)
    assert (tmp_path / "identity.key").read_bytes() == content


def test_non_ed25519_pem_is_an_error(tmp_path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "identity.key").write_bytes(pem)
    with pytest.raises(IdentityError, match="not Ed25519"):
        NodeIdentity.load_or_create(tmp_path)


def test_incarnation_persistence(tmp_path) -> None:
    assert load_incarnation(tmp_path / "fresh") == 0
    save_incarnation(tmp_path, 7)
    assert load_incarnation(tmp_path) == 7
    assert stat.S_IMODE(os.stat(tmp_path / "incarnation").st_mode) == 0o600
    # Each start comes back higher than the last.
    assert next_incarnation(tmp_path) == 8
    assert next_incarnation(tmp_path) == 9
    assert load_incarnation(tmp_path) == 9
    with pytest.raises(ValueError):
        save_incarnation(tmp_path, -1)


@pytest.mark.parametrize("content", [b"abc", b"-5", b"\xff", b""])
def test_corrupt_incarnation_reads_zero(tmp_path, content: bytes) -> None:
    (tmp_path / "incarnation").write_bytes(content)
    assert load_incarnation(tmp_path) == 0


def test_lock_is_exclusive_and_released(tmp_path) -> None:
    lock = lock_data_dir(tmp_path / "d")
    assert lock.held
    with pytest.raises(DataDirLocked, match=f"pid {os.getpid()}") as info:
        lock_data_dir(tmp_path / "d")
    assert "--data-dir" in str(info.value)
    lock.release()
    lock.release()  # idempotent
    with lock_data_dir(tmp_path / "d") as again:
        assert again.held
    assert not again.held


def test_lock_held_by_another_process(tmp_path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from p2p.identity import lock_data_dir
        lock = lock_data_dir({str(tmp_path)!r})
        print("locked", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"locked\n"
        with pytest.raises(DataDirLocked, match=f"pid {proc.pid}"):
            lock_data_dir(tmp_path)
    finally:
        proc.communicate(b"", timeout=10)
    # The holder exited: the kernel released its lock.
    lock_data_dir(tmp_path).release()
