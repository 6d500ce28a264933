from __future__ import annotations

import json
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.keyring import (
    KEY_BYTES,
    SEAL_OVERHEAD,
    Keyring,
    KeyringError,
    NullSealer,
    Sealer,
    SealError,
    decode_key,
    encode_key,
    generate_key,
    load_keyring,
    save_keyring,
)

K1 = bytes(range(32))
K2 = bytes(range(1, 33))
K3 = bytes(range(2, 34))


def test_overhead_is_29_bytes() -> None:
    ring = Keyring.single(K1)
    assert SEAL_OVERHEAD == 29
    assert ring.overhead == 29
    for n in (0, 1, 1400):
        assert len(ring.seal(b"x" * n)) == n + 29


def test_sealed_format_version_nonce_ciphertext() -> None:
    ring = Keyring.single(K1)
    a = ring.seal(b"hello")
    b = ring.seal(b"hello")
    assert a[0] == 1
    assert a[1:13] != b[1:13], "nonces must be fresh per message"
    assert b"hello" not in a


@given(plaintext=st.binary(max_size=2000), aad=st.binary(max_size=64))
def test_round_trip(plaintext: bytes, aad: bytes) -> None:
    ring = Keyring.single(K1)
    assert ring.open(ring.seal(plaintext, aad), aad) == plaintext


@settings(max_examples=500)
@given(data=st.binary(max_size=300))
def test_open_on_arbitrary_bytes_only_raises_seal_error(data: bytes) -> None:
    ring = Keyring([K2], K1)
    try:
        ring.open(data)
    except SealError:
        pass  # the only exception allowed; anything else fails the test


@given(flip=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_bit_flip_is_rejected(flip: int, bit: int) -> None:
    ring = Keyring.single(K1)
    sealed = bytearray(ring.seal(b"membership update", b"aad"))
    sealed[flip % len(sealed)] ^= 1 << bit
    with pytest.raises(SealError):
        ring.open(bytes(sealed), b"aad")


@pytest.mark.parametrize("bad", [None, "text", 42, [1, 2]])
def test_open_on_non_bytes_raises_seal_error(bad: object) -> None:
    with pytest.raises(SealError):
        Keyring.single(K1).open(bad)  # type: ignore[arg-type]
    with pytest.raises(SealError):
        NullSealer().open(bad)  # type: ignore[arg-type]


def test_seal_refuses_non_bytes() -> None:
    # bytes(5) would be five zero bytes: a silent bug if seal() accepted ints.
    for sealer in (Keyring.single(K1), NullSealer()):
        with pytest.raises(TypeError):
            sealer.seal(5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            sealer.seal("text")  # type: ignore[arg-type]


def test_wrong_aad_and_wrong_key_rejected() -> None:
    sealed = Keyring.single(K1).seal(b"x", b"udp")
    with pytest.raises(SealError):
        Keyring.single(K1).open(sealed, b"tcp")
    with pytest.raises(SealError):
        Keyring.single(K2).open(sealed, b"udp")
    assert issubclass(SealError, ValueError)


def test_rotation_install_use_remove() -> None:
    # Two nodes, both on K1; rotate to K2 the way an operator would.
    a, b = Keyring.single(K1), Keyring.single(K1)
    old_msg = a.seal(b"sealed under K1")

    a.install(K2)
    b.install(K2)
    assert a.list() == [K1, K2] and a.primary == K1
    a.use(K2)  # a switches first; b has not yet
    assert b.open(a.seal(b"from a")) == b"from a"  # b reads K2 already
    assert a.open(b.seal(b"from b")) == b"from b"  # a still reads K1
    b.use(K2)
    assert a.list()[0] == K2 and a.primary == K2
    assert a.open(old_msg) == b"sealed under K1"  # until removal

    a.remove(K1)
    assert a.list() == [K2]
    with pytest.raises(SealError):
        a.open(old_msg)
    assert a.open(b.seal(b"after")) == b"after"


def test_rotation_refusals() -> None:
    ring = Keyring.single(K1)
    with pytest.raises(KeyringError, match="primary"):
        ring.remove(K1)
    with pytest.raises(KeyringError, match="not installed"):
        ring.use(K2)
    with pytest.raises(KeyringError, match="not installed"):
        ring.remove(K2)
    with pytest.raises(KeyringError, match="32 bytes"):
        ring.install(b"short")
    ring.install(K2)
    ring.install(K2)  # idempotent
    assert ring.list() == [K1, K2]
    assert K2 in ring and K3 not in ring


def test_constructor_installs_primary_and_orders_it_first() -> None:
    ring = Keyring([K2, K3], K1)
    assert ring.list() == [K1, K2, K3]
    assert ring.primary == K1
    with pytest.raises(KeyringError):
        Keyring([], b"\x00" * 31)


def test_repr_does_not_leak_keys() -> None:
    ring = Keyring.single(K1)
    assert encode_key(K1) not in repr(ring)
    assert K1.hex() not in repr(ring)


def test_base64_helpers() -> None:
    key = generate_key()
    assert len(key) == KEY_BYTES
    assert generate_key() != key
    assert decode_key(encode_key(key)) == key
    assert decode_key("  " + encode_key(key) + "\n") == key
    for bad in ("not base64!", encode_key(K1)[:-4], "", "AAAA"):
        with pytest.raises(KeyringError):
            decode_key(bad)


def test_null_sealer() -> None:
    null = NullSealer()
    assert null.overhead == 0
    assert null.seal(b"abc") == b"abc"
    assert null.open(b"abc") == b"abc"
    assert isinstance(null, Sealer)
    assert isinstance(Keyring.single(K1), Sealer)


def test_file_round_trip_mode_0600(tmp_path) -> None:
    path = tmp_path / "keyring.json"
    ring = Keyring([K2], K1)
    save_keyring(path, ring)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc == {"keys": [encode_key(K1), encode_key(K2)], "primary": encode_key(K1)}
    loaded = load_keyring(path)
    assert loaded.list() == [K1, K2] and loaded.primary == K1
    # Overwrite keeps 0600 and leaves no temporary files behind.
    loaded.use(K2)
    save_keyring(path, loaded)
    assert load_keyring(path).primary == K2
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"keys": []}', "no 'primary'"),
        (b'{"primary": "AAAA"}', "'primary'"),
        (json.dumps({"primary": encode_key(K1), "keys": "x"}).encode(), "list"),
        (json.dumps({"primary": encode_key(K1), "keys": [encode_key(K2), "zz"]}).encode(), r"'keys'\[1\]"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_keyring_files(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "k.json"
    path.write_bytes(content)
    with pytest.raises(KeyringError, match=message) as info:
        load_keyring(path)
    assert str(path) in str(info.value)


def test_missing_keyring_file(tmp_path) -> None:
    with pytest.raises(KeyringError, match="does not exist"):
        load_keyring(tmp_path / "absent.json")


def test_primary_may_be_absent_from_keys_list(tmp_path) -> None:
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"primary": encode_key(K1), "keys": [encode_key(K2)]}))
    assert load_keyring(path).list() == [K1, K2]
